//! Scenario `latency`: commit-to-processed latency of a steady producer, the `pgq-ticker`
//! daemon at a 10 ms period and one [`Runner`] woken by `pgq_tick` notifications.
//!
//! A producer inserts one event per transaction at a steady rate (1,000 events/s for 20 s;
//! with `--quick`, 200/s for 3 s) into a queue of our schema with `ticker_max_lag` = '10 ms'
//! and `ticker_idle_period` = '1 s'. The producer notes the instant each commit returned,
//! keyed by the event's sequence number in `ev_data`; the consumer's handler notes, per event,
//! the time since that instant (one in-process monotonic clock). Ours only: there is no
//! reference variant.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pgq_consumer::{
    async_trait, BatchHandle, CancellationToken, Consumer, ConsumerConfig, HandlerError, Runner,
};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Event, QueueName};

use crate::harness::{percentile, Bench, Daemon, Side, WorkDir};
use crate::report::{Limit, Measure, Report};

/// The queue.
const QUEUE: &str = "latency";
/// The consumer.
const CONSUMER: &str = "latency_consumer";
/// The daemon's ticker period and the queue's `ticker_max_lag`.
const PERIOD_MS: u64 = 10;
/// The queue's `ticker_idle_period`.
const IDLE_PERIOD: &str = "1 s";
/// How long the consumer may lag behind the producer's last commit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The variant label.
const OURS: &str = "ours (pgq-ticker + Runner)";
/// Target for the median, ms.
const P50_MAX_MS: f64 = 20.0;
/// Target for the 99th percentile, ms.
const P99_MAX_MS: f64 = 100.0;

// language=SQL
const QUEUE_CONFIG: &str = "SELECT pgq.set_queue_config($1, 'ticker_max_lag', $2), \
     pgq.set_queue_config($1, 'ticker_idle_period', $3)";
// language=SQL
const PRODUCE: &str = "SELECT pgq.insert_event($1, 't', $2)";

/// Producer rate and duration.
#[derive(Debug, Clone, Copy)]
struct Load {
    per_second: u32,
    seconds: u32,
}

impl Load {
    fn events(self) -> usize {
        usize::try_from(self.per_second * self.seconds).unwrap_or(usize::MAX)
    }

    fn new(small: bool) -> Load {
        if small {
            Load {
                per_second: 200,
                seconds: 3,
            }
        } else {
            Load {
                per_second: 1_000,
                seconds: 20,
            }
        }
    }
}

/// How the figures are made.
fn method(load: Load) -> Vec<String> {
    vec![
        format!(
            "A producer inserts one event per transaction at {} events/s for {} s into a \
             queue of our schema with `ticker_max_lag` = '{PERIOD_MS} ms' and \
             `ticker_idle_period` = '{IDLE_PERIOD}'; the `pgq-ticker run` daemon ticks it \
             with a {PERIOD_MS} ms period; one `Runner` (LISTEN pgq_tick, default polling \
             fallback) processes the batches.",
            load.per_second, load.seconds
        ),
        "Latency per event: from the instant the producer's commit returned to the \
         instant the handler saw the event, on one in-process monotonic clock (the commit \
         acknowledgement's trip is not counted). Percentiles are nearest-rank over all \
         events of a run; the table shows the median over runs."
            .to_owned(),
        "Ours only: no reference variant is measured (PgQue, a pure-SQL PGQ, reports a \
         52 ms median)."
            .to_owned(),
    ]
}

/// Runs the scenario on a scratch database of the bench's server per run.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let load = Load::new(bench.plan.small);
    let ticker_bin = bench.ticker_binary()?;
    let work_dir = WorkDir::new("latency")?;
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for run in 1..=bench.plan.runs {
        let mut ms = measure(bench, load, run, &ticker_bin, &work_dir).await?;
        ms.sort_unstable_by(f64::total_cmp);
        let (a, b) = (percentile(&ms, 50), percentile(&ms, 99));
        tracing::info!(run, p50_ms = a, p99_ms = b, "latency");
        p50.push(a);
        p99.push(b);
    }
    let measure = |what: &str, samples| Measure {
        what: what.to_owned(),
        variant: OURS,
        metric: "ms",
        samples,
    };
    let (p50, p99) = (
        measure("commit-to-processed p50", p50),
        measure("commit-to-processed p99", p99),
    );
    let limits = vec![
        Limit::of("ours p50 (ms)", Some(&p50), P50_MAX_MS),
        Limit::of("ours p99 (ms)", Some(&p99), P99_MAX_MS),
    ];
    Ok(Report {
        scenario: "latency",
        notes: method(load),
        series: Vec::new(),
        ratios: Vec::new(),
        measures: vec![p50, p99],
        limits,
    })
}

/// One run on a fresh database: every event's commit-to-processed latency, in ms.
async fn measure(
    bench: &Bench<'_>,
    load: Load,
    run: u32,
    ticker_bin: &std::path::Path,
    work_dir: &WorkDir,
) -> Result<Vec<f64>> {
    let (dsn, client) = Side::Ours
        .database(bench.server, &format!("latency_r{run}"))
        .await?;
    let queue = QueueName::new(QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    client
        .query_one(
            QUEUE_CONFIG,
            &[&QUEUE, &format!("{PERIOD_MS} ms"), &IDLE_PERIOD],
        )
        .await?;
    let events = load.events();
    let clock = Arc::new(Clock::new(events));
    let config = ConsumerConfig::builder(queue, ConsumerName::new(CONSUMER)?).build();
    let runner = Runner::connect(&dsn, config, clock.clone()).await?;
    let period = Duration::from_millis(PERIOD_MS);
    let daemon = Daemon::ours(ticker_bin, &dsn, period, work_dir.path()).await?;
    let cancel = CancellationToken::new();
    let consuming = tokio::spawn(runner.run(cancel.clone()));

    let result = async {
        let producer = dsn.connect().await?;
        let produce = producer.prepare(PRODUCE).await?;
        let mut interval = tokio::time::interval(Duration::from_secs(1) / load.per_second);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..events {
            interval.tick().await;
            producer
                .query_one(&produce, &[&QUEUE, &seq.to_string()])
                .await?;
            clock.commit(seq, Instant::now());
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while clock.processed() < events {
            ensure!(
                Instant::now() < deadline && !consuming.is_finished(),
                "{} of {events} events processed",
                clock.processed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    }
    .await;
    cancel.cancel();
    let consumed = consuming.await;
    drop(client);
    let watch = bench.server.maintenance().connect().await?;
    daemon.stop(&watch).await?;
    result?;
    consumed??;
    let ms = std::mem::take(
        &mut *clock
            .latencies_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    ensure!(
        ms.len() == events,
        "{} of {events} events processed",
        ms.len()
    );
    Ok(ms)
}

/// Commit instants by sequence number, and the latencies the handler saw.
#[derive(Debug)]
struct Clock {
    committed: Mutex<Vec<Option<Instant>>>,
    latencies_ms: Mutex<Vec<f64>>,
}

impl Clock {
    fn new(events: usize) -> Clock {
        Clock {
            committed: Mutex::new(vec![None; events]),
            latencies_ms: Mutex::new(Vec::with_capacity(events)),
        }
    }

    fn commit(&self, seq: usize, at: Instant) {
        self.committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)[seq] = Some(at);
    }

    fn processed(&self) -> usize {
        self.latencies_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn record(&self, events: &[Event]) -> Result<(), HandlerError> {
        let now = Instant::now();
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut latencies = self
            .latencies_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for event in events {
            let seq: usize = event
                .ev_data
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|err| format!("bad ev_data: {err}"))?;
            // The producer notes the instant once its commit returned; the event may reach
            // the handler a moment earlier, which counts as zero.
            let at = committed.get(seq).copied().flatten().unwrap_or(now);
            latencies.push(now.saturating_duration_since(at).as_secs_f64() * 1e3);
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for Clock {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            self.record(&events)?;
        }
        Ok(())
    }

    async fn process_event(&self, _: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        self.record(std::slice::from_ref(event))
    }
}
