//! The batch cap, in real time: the ticker runs as the daemon does (a pass every 50 ms), stops
//! for a while as a restarted or failed daemon would, and comes back; no tick is backdated.
//! Every event arrives once, each transaction whole, every batch at most `ticker_max_batch`
//! events plus the transactions straddling a cut; and the exact backlog counted before the
//! drain is what the consumer then receives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgq_core::tokio_postgres::Client;
use pgq_core::{ConsumerName, Dsn, QueueName, QueueSetting};
use pgq_testkit::TestDb;
use pgq_ticker::DatabaseTicker;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::setup::{consumer, dsn, ours, queue, take_batch};

/// The events of one producer transaction.
const PER_TX: usize = 100;

/// A ticker that makes a pass every 50 ms until stopped; returns the catch-up cuts it wrote.
struct RunningTicker {
    stop: Arc<AtomicBool>,
    task: JoinHandle<anyhow::Result<u64>>,
}

impl RunningTicker {
    async fn start(db: &TestDb) -> anyhow::Result<RunningTicker> {
        let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut cuts = 0;
            while !stopped.load(Ordering::Relaxed) {
                cuts += ticker.tick_once().await?.catchup_ticks;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(cuts)
        });
        Ok(RunningTicker { stop, task })
    }

    async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// `producers` connections each commit `transactions` transactions of [`PER_TX`] events (every
/// tenth rolls back instead); returns the events committed.
async fn produce(db: &TestDb, producers: usize, transactions: usize) -> anyhow::Result<usize> {
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let dsn = db.dsn();
            tokio::spawn(async move {
                let client = Dsn::parse(&dsn)?.connect().await?;
                let mut committed = 0;
                for t in 0..transactions {
                    let end = if t % 10 == 9 { "ROLLBACK" } else { "COMMIT" };
                    client
                        .batch_execute(&format!(
                            "BEGIN; SELECT pgq.insert_event('q', 'e', 'x', 'p{p}t{t}', NULL, NULL,
                                                            NULL)
                                      FROM generate_series(1, {PER_TX}); {end};"
                        ))
                        .await?;
                    if end == "COMMIT" {
                        committed += PER_TX;
                    }
                }
                anyhow::Ok(committed)
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        committed += task.await??;
    }
    Ok(committed)
}

/// The consumer's batches until one arrives empty-handed after `quiet` of waiting: their sizes,
/// checking that no transaction is split and none comes twice.
async fn drain(
    client: &mut Client,
    q: &QueueName,
    c: &ConsumerName,
    quiet: Duration,
) -> anyhow::Result<Vec<usize>> {
    let mut sizes = Vec::new();
    let mut batch_of: HashMap<String, usize> = HashMap::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < quiet {
        let Some(events) = take_batch(client, q, c).await? else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if events.is_empty() {
            continue;
        }
        for event in &events {
            let tag = event.extra1.clone().unwrap_or_default();
            let first = *batch_of.entry(tag.clone()).or_insert(sizes.len());
            anyhow::ensure!(first == sizes.len(), "transaction {tag} split or repeated");
        }
        sizes.push(events.len());
        idle_since = Instant::now();
    }
    Ok(sizes)
}

async fn exact_backlog(client: &Client, q: &QueueName, c: &ConsumerName) -> anyhow::Result<i64> {
    let rows = pgq_core::consumer_backlog_exact(client, Some(q), Some(c)).await?;
    Ok(rows.first().map_or(0, |b| b.pending_events))
}

async fn queue_with_cap(client: &Client, cap: i32) -> anyhow::Result<(QueueName, ConsumerName)> {
    let (q, c) = (queue("q"), consumer("c"));
    pgq_core::create_queue(client, &q).await?;
    pgq_core::set_queue_config(client, &q, QueueSetting::TickerMaxBatch(cap)).await?;
    pgq_core::register_consumer(client, &q, &c).await?;
    Ok((q, c))
}

/// A restart: the ticker gone for about as long as 4 producers take to commit 100,000 events
/// (a second or two here, under the 3 s of ticker_max_lag that once gated the cuts).
#[tokio::test]
async fn a_ticker_restart_gap_is_cut_at_the_cap() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = ours(&db).await?;
    let cap = 10_000;
    let (q, c) = queue_with_cap(&client, cap).await?;
    let ticker = RunningTicker::start(&db).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ticker.stop().await?;

    let gap = Instant::now();
    let committed = produce(&db, 4, 278).await?;
    let gap = gap.elapsed();
    let exact = exact_backlog(&client, &q, &c).await?;
    assert_eq!(
        exact,
        i64::try_from(committed)?,
        "exact backlog before the restart"
    );

    let ticker = RunningTicker::start(&db).await?;
    let sizes = drain(&mut client, &q, &c, Duration::from_secs(5)).await?;
    let cuts = ticker.stop().await?;
    assert_eq!(sizes.iter().sum::<usize>(), committed, "every event once");
    let straddling = 4 * PER_TX;
    let cap = usize::try_from(cap)?;
    assert!(
        sizes.iter().all(|&n| n <= cap + straddling),
        "a batch over the cap after a {gap:?} gap: {sizes:?}"
    );
    assert!(sizes.len() >= committed / cap, "{sizes:?}");
    assert!(cuts > 0, "the cap cut the backlog");
    eprintln!(
        "a {gap:?} gap, {committed} events: {} batches, the largest {}",
        sizes.len(),
        sizes.iter().max().unwrap_or(&0)
    );
    Ok(())
}

/// A long outage, with a transaction held open across it: the exact backlog counts what is
/// committed, the consumer receives exactly that, then the held transaction whole.
#[tokio::test]
async fn a_long_outage_is_cut_and_counted_exactly() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = ours(&db).await?;
    let cap = 2_000;
    let (q, c) = queue_with_cap(&client, cap).await?;
    // what is left under the cap is ticked soon, not after the default 3 s
    pgq_core::set_queue_config(
        &client,
        &q,
        QueueSetting::TickerMaxLag(Duration::from_millis(200)),
    )
    .await?;
    let held = Dsn::parse(&db.dsn())?.connect().await?;
    held.batch_execute(
        "BEGIN; SELECT pgq.insert_event('q', 'held', 'h', 'held', NULL, NULL, NULL)
                  FROM generate_series(1, 50);",
    )
    .await?;
    let committed = produce(&db, 4, 50).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let exact = exact_backlog(&client, &q, &c).await?;
    assert_eq!(
        exact,
        i64::try_from(committed)?,
        "held events are not counted"
    );
    let ticker = RunningTicker::start(&db).await?;
    let sizes = drain(&mut client, &q, &c, Duration::from_secs(4)).await?;
    assert_eq!(sizes.iter().sum::<usize>(), committed);
    let cap = usize::try_from(cap)?;
    assert!(sizes.iter().all(|&n| n <= cap + 4 * PER_TX), "{sizes:?}");

    held.batch_execute("COMMIT").await?;
    let late = Instant::now() + Duration::from_secs(10);
    while exact_backlog(&client, &q, &c).await? != 50 {
        anyhow::ensure!(Instant::now() < late, "the held transaction is not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A loaded machine may tick it later than ticker_max_lag: wait for the tick itself, so the
    // drain's quiet window starts with the batch ready.
    let late = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = pgq_core::consumer_backlog_exact(&client, Some(&q), Some(&c)).await?;
        if rows.first().is_some_and(|b| b.ticked_events == 50) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < late,
            "the held transaction is never ticked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sizes = drain(&mut client, &q, &c, Duration::from_secs(4)).await?;
    assert_eq!(sizes, [50], "the held transaction, whole");
    assert_eq!(exact_backlog(&client, &q, &c).await?, 0);
    ticker.stop().await?;
    Ok(())
}

/// A steady load well under the cap per pass: only PGQ's rule ticks, no cut is ever written.
#[tokio::test]
async fn a_steady_load_under_the_cap_gets_pgqs_ticks() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = ours(&db).await?;
    let (q, c) = queue_with_cap(&client, 10_000).await?;
    pgq_core::set_queue_config(
        &client,
        &q,
        QueueSetting::TickerMaxLag(Duration::from_millis(100)),
    )
    .await?;
    let ticker = RunningTicker::start(&db).await?;
    let producer = Dsn::parse(&db.dsn())?.connect().await?;
    let mut committed = 0;
    let until = Instant::now() + Duration::from_secs(2);
    let mut t = 0;
    while Instant::now() < until {
        producer
            .batch_execute(&format!(
                "SELECT pgq.insert_event('q', 'e', 'x', 't{t}', NULL, NULL, NULL)
                   FROM generate_series(1, 20)"
            ))
            .await?;
        committed += 20;
        t += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sizes = drain(&mut client, &q, &c, Duration::from_secs(2)).await?;
    assert_eq!(sizes.iter().sum::<usize>(), committed);
    assert_eq!(ticker.stop().await?, 0, "no cut under the cap");
    assert!(
        sizes.len() > 5,
        "PGQ's rule ticked as the load came: {sizes:?}"
    );
    Ok(())
}
