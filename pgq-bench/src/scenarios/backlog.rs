//! Scenario `backlog`: a ticker outage, then the drain.
//!
//! With no ticker running, 4 producers insert 500,000 events of 100 bytes (with `--quick`,
//! 20,000) in transactions of 100 events into a queue whose consumer is registered already.
//! Then the ticker starts and one consumer drains the queue: ours is the `pgq-ticker run`
//! daemon and our [`Runner`] (in this process) on our schema; the reference is `pgqd` and
//! python3-pgq's `Consumer` (`python/backlog_consumer.py` under `/usr/bin/python3`) on the
//! original extension. The clock runs from the daemon's start until the consumer has
//! processed every event.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use pgq_consumer::{ConsumerConfig, Runner};
use pgq_core::{ConsumerName, Dsn, QueueName};
use serde::Deserialize;
use tokio_postgres::Client;

use crate::harness::{
    median_of_sorted, reference, skytools_config, Bench, Counter, Daemon, Part, Producer,
    PythonWorker, Side, WorkDir, PYTHON,
};
use crate::report::{Measures, Ratio, Report, Sample, Series};

/// The queue.
const QUEUE: &str = "backlog";
/// The consumer.
const CONSUMER: &str = "drain";
/// Concurrent producers.
const PRODUCERS: u64 = 4;
/// Events per producer transaction.
const PER_TX: u64 = 100;
/// Bytes of `ev_data` per event.
const DATA_BYTES: i32 = 100;
/// Both daemons' ticker period.
const PERIOD: Duration = Duration::from_millis(100);
/// How long a drain may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

const SHAPE: &str = "drain after outage";
const OURS: &str = "ours (pgq-ticker + Runner)";
const REFERENCE: &str = "reference (pgqd + python3-pgq Consumer)";

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
            "Outage: no ticker runs while {PRODUCERS} producers insert {events} events of \
             {DATA_BYTES} bytes in transactions of {PER_TX} events; the consumer was \
             registered before. Then the daemon starts (ticker period {}ms) and one \
             consumer drains; the clock runs from the daemon's start to the last event \
             processed. Each side gets a fresh database per run.",
            PERIOD.as_millis()
        ),
        format!(
            "`{OURS}`: `pgq-ticker run` on our schema and our `Runner` in this process \
             (default settings, polling every 5 ms while there is no batch); its peak RSS is \
             not reported (it would be this whole process's); `consumer time in batches` sums \
             each batch's time from taking it to its commit (the rest of the drain is waiting \
             for ticks). `{REFERENCE}`: `pgqd` on the \
             original extension and `python/backlog_consumer.py` under {PYTHON} (default \
             pgq_lazy_fetch, polling every 5 ms); peak RSS is the worker's VmHWM."
        ),
    ]
}

/// What one drain did.
struct Drained {
    seconds: f64,
    sizes: Vec<u64>,
    /// Ours: the time spent in batches (from taking each to its commit), in seconds.
    busy_seconds: Option<f64>,
    peak_rss_kb: Option<u64>,
}

/// Runs the scenario on scratch databases of the bench's server, a fresh one per side and run.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let events: u64 = if bench.plan.small { 20_000 } else { 500_000 };
    let ticker_bin = bench.ticker_binary()?;
    let work_dir = WorkDir::new("backlog")?;
    let mut notes = method(events);
    let parts = [Part::Extension, Part::Pgqd, Part::PythonPgq];
    let sides = if reference(bench.server, &parts, "the reference is skipped", &mut notes).await? {
        vec![Side::Ours, Side::Reference]
    } else {
        vec![Side::Ours]
    };

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); sides.len()];
    let mut measures = Measures::default();
    for run in 1..=bench.plan.runs {
        for (i, &side) in sides.iter().enumerate() {
            let variant = side.pick(OURS, REFERENCE);
            let dsn = prepare(bench, side, run, events).await?;
            let watch = bench.server.maintenance().connect().await?;
            let drained = match side {
                Side::Ours => drain_ours(&dsn, &watch, &ticker_bin, events, &work_dir).await?,
                Side::Reference => drain_reference(&dsn, &watch, events, &work_dir).await?,
            };
            let total: u64 = drained.sizes.iter().sum();
            ensure!(
                total == events,
                "{variant}: {total} events drained, {events} expected"
            );
            let mut sizes: Vec<f64> = drained.sizes.iter().map(|&s| s as f64).collect();
            sizes.sort_unstable_by(f64::total_cmp);
            tracing::info!(
                run,
                side = variant,
                seconds = drained.seconds,
                batches = sizes.len(),
                "drained"
            );
            samples[i].push(Sample::new(run, events, drained.seconds));
            let mut push = |what, metric, value| measures.push(what, variant, metric, value);
            push("drain time", "s", drained.seconds);
            push("batches", "batches", sizes.len() as f64);
            push("median batch size", "events", median_of_sorted(&sizes));
            push(
                "max batch size",
                "events",
                sizes.last().copied().unwrap_or(0.0),
            );
            if let Some(busy) = drained.busy_seconds {
                push("consumer time in batches", "s", busy);
            }
            if let Some(kb) = drained.peak_rss_kb {
                push("consumer peak RSS", "MB", kb as f64 / 1024.0);
            }
        }
    }

    let series: Vec<Series> = sides
        .iter()
        .zip(samples)
        .map(|(side, samples)| Series {
            shape: SHAPE,
            variant: side.pick(OURS, REFERENCE),
            reps: 1,
            events_per_rep: events,
            samples,
        })
        .collect();
    let find = |variant: &str| series.iter().find(|s| s.variant == variant);
    let ratios = vec![Ratio::of(
        format!("{OURS} / {REFERENCE}"),
        find(OURS),
        find(REFERENCE),
        None,
    )];
    Ok(Report {
        scenario: "backlog",
        notes,
        series,
        ratios,
        measures: measures.into_vec(),
        limits: Vec::new(),
    })
}

/// A fresh database of `side` with the queue, its registered consumer and the backlog,
/// inserted with no ticker running.
async fn prepare(bench: &Bench<'_>, side: Side, run: u32, events: u64) -> Result<Dsn> {
    let (dsn, client) = side
        .database(bench.server, &format!("backlog_r{run}"))
        .await?;
    let queue = QueueName::new(QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    pgq_core::register_consumer(&client, &queue, &ConsumerName::new(CONSUMER)?).await?;

    let started = Instant::now();
    PRODUCER.fill(&dsn, events, PRODUCERS).await?;
    tracing::info!(
        events,
        seconds = started.elapsed().as_secs_f64(),
        side = side.pick(OURS, REFERENCE),
        "backlog inserted"
    );
    Ok(dsn)
}

/// Starts our daemon and drains with our Runner.
async fn drain_ours(
    dsn: &Dsn,
    watch: &Client,
    ticker_bin: &Path,
    events: u64,
    work_dir: &WorkDir,
) -> Result<Drained> {
    let counter = Arc::new(Counter::default());
    let config = ConsumerConfig::builder(QueueName::new(QUEUE)?, ConsumerName::new(CONSUMER)?)
        .register(false)
        .build();
    let mut runner = Runner::connect(dsn, config, counter.clone()).await?;
    let started = Instant::now();
    let daemon = Daemon::ours(ticker_bin, dsn, PERIOD, work_dir.path()).await?;
    let result = async {
        let (mut sizes, mut busy) = (Vec::new(), Duration::ZERO);
        while counter.events() < events {
            ensure!(
                started.elapsed() < DRAIN_TIMEOUT,
                "{} of {events} events drained",
                counter.events()
            );
            match runner.process_next_batch().await? {
                Some(report) => {
                    sizes.push(report.events);
                    busy += report.elapsed;
                }
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        anyhow::Ok((sizes, busy))
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    drop(runner);
    daemon.stop(watch).await?;
    let (sizes, busy) = result?;
    Ok(Drained {
        seconds,
        sizes,
        busy_seconds: Some(busy.as_secs_f64()),
        peak_rss_kb: None,
    })
}

/// What the Python worker prints at the end.
#[derive(Debug, Deserialize)]
struct PythonDone {
    sizes: Vec<u64>,
    end: f64,
    peak_rss_kb: Option<u64>,
}

/// Starts pgqd and drains with python3-pgq's Consumer.
async fn drain_reference(
    dsn: &Dsn,
    watch: &Client,
    events: u64,
    work_dir: &WorkDir,
) -> Result<Drained> {
    let config = skytools_config(
        work_dir.path(),
        "backlog_consumer",
        dsn.dbname(),
        dsn,
        &[("queue_name", QUEUE), ("consumer_name", CONSUMER)],
    )?;
    let events = events.to_string();
    let mut worker = PythonWorker::start(
        "backlog_consumer.py",
        [config.as_os_str(), OsStr::new(&events)],
        dsn,
    )
    .await?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let daemon = Daemon::pgqd(dsn, PERIOD, work_dir.path()).await?;
    let result = async {
        worker.go().await?;
        worker.done::<PythonDone>(DRAIN_TIMEOUT).await
    }
    .await;
    daemon.stop(watch).await?;
    let done = result?;
    Ok(Drained {
        seconds: done.end - started,
        sizes: done.sizes,
        busy_seconds: None,
        peak_rss_kb: done.peak_rss_kb,
    })
}
