//! Scenario `exact-backlog`: `pgq.get_consumer_backlog_exact` over a large backlog.
//!
//! With no ticker running, 4 producers insert 1,000,000 events of 100 bytes (with `--quick`,
//! 20,000) in transactions of 100 into a queue whose consumer is registered already; then one
//! `pgq.ticker(queue)` cuts what it can into capped batches, so the backlog is both ticked and
//! not yet ticked, as after an outage. The exact count is timed with a warm cache (several
//! calls in a row) and cold (first call after the OS page cache is dropped and the private
//! cluster restarted).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use pgq_core::{ConsumerName, QueueName};

use crate::harness::{Bench, Producer, Side};
use crate::report::{Limit, Measures, Report};

/// The queue.
const QUEUE: &str = "exact";
/// The consumer.
const CONSUMER: &str = "counted";
/// Concurrent producers.
const PRODUCERS: u64 = 4;
/// Events per producer transaction.
const PER_TX: u64 = 100;
/// Bytes of `ev_data` per event.
const DATA_BYTES: i32 = 100;
/// Warm calls timed per run, after one untimed call.
const WARM_CALLS: u32 = 5;
/// The target for a warm count of 1,000,000 events.
const WARM_MAX: Duration = Duration::from_secs(1);
/// Where the kernel drops its page cache (root only).
const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

const OURS: &str = "ours";
const WARM: &str = "exact backlog, warm";
const COLD: &str = "exact backlog, cold";

/// What the producers insert.
const PRODUCER: Producer = Producer {
    queue: QUEUE,
    data_bytes: DATA_BYTES,
    per_tx: PER_TX,
};

/// How the figures are made.
fn method(events: u64) -> Vec<String> {
    vec![
        format!(
            "With no ticker running, {PRODUCERS} producers insert {events} events of \
             {DATA_BYTES} bytes in transactions of {PER_TX} into a queue of our schema whose \
             consumer is registered; one `pgq.ticker(queue)` then cuts them into batches of at \
             most the default ticker_max_batch, leaving the rest unticked; then `ANALYZE` (as \
             autovacuum would after such an insert)."
        ),
        format!(
            "`{WARM}`: {WARM_CALLS} calls of `pgq.get_consumer_backlog_exact(queue, consumer)` \
             per run after one untimed call, wall-clock time on one connection. `{COLD}`: once \
             per run, after `sync`, dropping the OS page cache ({DROP_CACHES}) and restarting \
             the private cluster, the first call on a new connection. Each call's count is \
             checked to be exactly the {events} events."
        ),
    ]
}

/// Runs the scenario on one scratch database.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let events: u64 = if bench.plan.small { 20_000 } else { 1_000_000 };
    let mut notes = method(events);
    let queue = QueueName::new(QUEUE)?;
    let consumer = ConsumerName::new(CONSUMER)?;
    let (dsn, client) = Side::Ours.database(bench.server, "exact").await?;
    pgq_core::create_queue(&client, &queue).await?;
    pgq_core::register_consumer(&client, &queue, &consumer).await?;
    let started = Instant::now();
    PRODUCER.fill(&dsn, events, PRODUCERS).await?;
    tracing::info!(
        events,
        seconds = started.elapsed().as_secs_f64(),
        "backlog inserted"
    );
    client
        .query_one("SELECT pgq.ticker($1)", &[&QUEUE])
        .await
        .context("ticking the queue")?;
    client.batch_execute("ANALYZE").await?;
    drop(client);

    let mut measures = Measures::default();
    let mut cold_note = None;
    for run in 1..=bench.plan.runs {
        match evict(bench).await? {
            Some(how) => {
                let client = dsn.connect().await?;
                let seconds = count(&client, &queue, &consumer, events).await?;
                tracing::info!(run, seconds, "cold exact backlog");
                measures.push(COLD, OURS, "s", seconds);
                cold_note.get_or_insert(how);
            }
            None => {
                cold_note.get_or_insert("not measured: the server is not a private cluster");
            }
        }
        let client = dsn.connect().await?;
        count(&client, &queue, &consumer, events).await?;
        for _ in 0..WARM_CALLS {
            let seconds = count(&client, &queue, &consumer, events).await?;
            measures.push(WARM, OURS, "s", seconds);
        }
    }
    if let Some(how) = cold_note {
        notes.push(format!("Cold: {how}."));
    }
    let measures = measures.into_vec();
    let warm = measures.iter().find(|m| m.what == WARM);
    let limits = vec![Limit::of(
        format!("{WARM}, {events} events (s)"),
        warm,
        WARM_MAX.as_secs_f64(),
    )];
    Ok(Report {
        scenario: "exact-backlog",
        notes,
        series: Vec::new(),
        ratios: Vec::new(),
        measures,
        limits,
    })
}

/// Drops the OS page cache (when this process may) and restarts the private cluster; says
/// how, or `None` when the server is not the bench's own.
async fn evict(bench: &Bench<'_>) -> Result<Option<&'static str>> {
    if !bench.server.restart().await? {
        return Ok(None);
    }
    let synced = tokio::process::Command::new("sync").status().await?;
    ensure!(synced.success(), "sync failed: {synced}");
    Ok(Some(match std::fs::write(DROP_CACHES, "3") {
        Ok(()) => "OS page cache dropped and the private cluster restarted before the call",
        Err(_) => {
            "the private cluster restarted before the call; the OS page cache was NOT dropped \
             (writing /proc/sys/vm/drop_caches needs root)"
        }
    }))
}

/// Times one exact count and checks it is `events`.
async fn count(
    client: &tokio_postgres::Client,
    queue: &QueueName,
    consumer: &ConsumerName,
    events: u64,
) -> Result<f64> {
    let started = Instant::now();
    let rows = pgq_core::consumer_backlog_exact(client, Some(queue), Some(consumer)).await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(rows.len() == 1, "{} rows for one consumer", rows.len());
    let row = &rows[0];
    ensure!(
        u64::try_from(row.pending_events)? == events,
        "exact backlog {row:?}, {events} events expected"
    );
    Ok(seconds)
}
