//! Scenario `backlog`: a ticker outage, then the drain.
//!
//! With no ticker running, 4 producers insert 500,000 events of 100 bytes (with `--quick`,
//! 20,000) in transactions of 100 events into a queue whose consumer is registered already.
//! Then the ticker starts and one consumer drains the queue: ours is the `pgq-ticker run`
//! daemon and our [`Runner`] (in this process) on our schema; the reference is `pgqd` and
//! python3-pgq's `Consumer` (`python/backlog_consumer.py` under `/usr/bin/python3`) on the
//! original extension. The clock runs from the daemon's start until the consumer has
//! processed every event.
//!
//! Ours drains with the default batch cap (`ticker_max_batch`), with the cap so high that the
//! backlog is one batch, and with a sweep of other caps, interleaved run by run, so that the
//! default is chosen from the drain times (the sweep not with `--quick`).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use pgq_consumer::{ConsumerConfig, Runner};
use pgq_core::{ConsumerName, Dsn, QueueName, QueueSetting};
use serde::Deserialize;
use tokio_postgres::Client;

use crate::harness::{
    median_of_sorted, reference, skytools_config, Bench, Counter, Daemon, Part, Producer,
    PythonWorker, Side, WorkDir, PYTHON,
};
use crate::report::{thousands, Limit, Measures, Ratio, Report, Sample, Series};

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
/// `ticker_max_batch` as our schema installs it; the scenario checks the queue has it.
const DEFAULT_CAP: i32 = 10_000;
/// The caps swept besides the default, each with its variant's name.
const SWEEP: [(i32, &str); 3] = [
    (1_000, "ours, cap 1,000"),
    (5_000, "ours, cap 5,000"),
    (20_000, "ours, cap 20,000"),
];
/// A cap no backlog reaches: the whole backlog is one batch.
const NO_CAP: i32 = i32::MAX;
/// The most a drain may take, as a multiple of the same backlog's drain as one batch.
const MAX_DRAIN_VS_ONE_BATCH: f64 = 1.2;

const SHAPE: &str = "drain after outage";
const OURS: &str = "ours (pgq-ticker + Runner)";
const ONE_BATCH: &str = "ours, one batch (cap 2,147,483,647)";
const REFERENCE: &str = "reference (pgqd + python3-pgq Consumer)";
/// The measure the drain-time limits read.
const VS_ONE_BATCH: &str = "drain time / one batch's in the same run";

/// What the producers insert.
const PRODUCER: Producer = Producer {
    queue: QUEUE,
    data_bytes: DATA_BYTES,
    per_tx: PER_TX,
};

/// One way to drain: ours with a cap (`None`: the schema's default), or the reference.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    side: Side,
    cap: Option<i32>,
}

impl Variant {
    /// The cap batches are held to; `None` for the reference and for one batch.
    fn bound(self) -> Option<i32> {
        match (self.side, self.cap) {
            (Side::Reference, _) | (_, Some(NO_CAP)) => None,
            (Side::Ours, cap) => Some(cap.unwrap_or(DEFAULT_CAP)),
        }
    }
}

/// How the figures are made.
fn method(events: u64) -> Vec<String> {
    vec![
        format!(
            "Outage: no ticker runs while {PRODUCERS} producers insert {events} events of \
             {DATA_BYTES} bytes in transactions of {PER_TX} events; the consumer was \
             registered before. Then the daemon starts (ticker period {}ms) and one \
             consumer drains; the clock runs from the daemon's start to the last event \
             processed. Each variant gets a fresh database per run; the variants alternate \
             within each run.",
            PERIOD.as_millis()
        ),
        format!(
            "`{OURS}`: `pgq-ticker run` on our schema with the queue's default \
             ticker_max_batch ({DEFAULT_CAP}) and our `Runner` in this process (default \
             settings, polling every 5 ms while there is no batch). `{ONE_BATCH}` sets \
             ticker_max_batch to {NO_CAP}, so the backlog is one batch as before the cap; the \
             other `ours, cap N` variants (not with `--quick`) set it to N. `consumer time in batches` sums each \
             batch's time from taking it to its commit (the rest of the drain is waiting for \
             ticks). `{VS_ONE_BATCH}` divides a variant's drain time by `{ONE_BATCH}`'s in the \
             same run; its median is held to {MAX_DRAIN_VS_ONE_BATCH}. A batch may exceed its \
             cap by the transactions straddling a cut, at most one per concurrent writer, so \
             the largest batch is held to cap + {PRODUCERS} × {PER_TX} events."
        ),
        format!(
            "Peak RSS: `ticker daemon peak RSS` is the `pgq-ticker run` process's VmHWM (from \
             /proc/PID/status just before it is stopped): the ticker only. Our consumer runs \
             in this process, whose RSS includes the whole benchmark, so it is not reported \
             here (pgq-consumer's memory test holds a Runner's peak under 32 MB in a process \
             of its own). `{REFERENCE}`: `pgqd` on the original extension and \
             `python/backlog_consumer.py` under {PYTHON} (default pgq_lazy_fetch, polling \
             every 5 ms); its `consumer peak RSS` is the Python worker's VmHWM."
        ),
    ]
}

/// What one drain did.
struct Drained {
    seconds: f64,
    sizes: Vec<u64>,
    /// Ours: the time spent in batches (from taking each to its commit), in seconds.
    busy_seconds: Option<f64>,
    /// The reference: the Python consumer's VmHWM.
    consumer_rss_kb: Option<u64>,
    /// Ours: the ticker daemon's VmHWM.
    ticker_rss_kb: Option<u64>,
}

/// Runs the scenario on scratch databases of the bench's server, a fresh one per variant and
/// run.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let events: u64 = if bench.plan.small { 20_000 } else { 500_000 };
    let ticker_bin = bench.ticker_binary()?;
    let work_dir = WorkDir::new("backlog")?;
    let mut notes = method(events);
    let parts = [Part::Extension, Part::Pgqd, Part::PythonPgq];
    let ours = |name, cap| Variant {
        name,
        side: Side::Ours,
        cap,
    };
    let mut variants = vec![ours(OURS, None), ours(ONE_BATCH, Some(NO_CAP))];
    if !bench.plan.small {
        variants.extend(SWEEP.iter().map(|&(cap, name)| ours(name, Some(cap))));
    }
    if reference(bench.server, &parts, "the reference is skipped", &mut notes).await? {
        variants.push(Variant {
            name: REFERENCE,
            side: Side::Reference,
            cap: None,
        });
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut measures = Measures::default();
    for run in 1..=bench.plan.runs {
        let mut one_batch_seconds = None;
        let mut capped_seconds = Vec::new();
        for (i, &variant) in variants.iter().enumerate() {
            let name = variant.name;
            let dsn = prepare(bench, variant, run, i, events).await?;
            let watch = bench.server.maintenance().connect().await?;
            let drained = match variant.side {
                Side::Ours => drain_ours(&dsn, &watch, &ticker_bin, events, &work_dir).await?,
                Side::Reference => drain_reference(&dsn, &watch, events, &work_dir).await?,
            };
            let total: u64 = drained.sizes.iter().sum();
            ensure!(
                total == events,
                "{name}: {total} events drained, {events} expected"
            );
            let mut sizes: Vec<f64> = drained.sizes.iter().map(|&s| s as f64).collect();
            sizes.sort_unstable_by(f64::total_cmp);
            tracing::info!(
                run,
                variant = name,
                seconds = drained.seconds,
                batches = sizes.len(),
                max_batch = sizes.last().copied().unwrap_or(0.0),
                "drained"
            );
            samples[i].push(Sample::new(run, events, drained.seconds));
            let mut push = |what, metric, value| measures.push(what, name, metric, value);
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
            if let Some(kb) = drained.ticker_rss_kb {
                push("ticker daemon peak RSS", "MB", kb as f64 / 1024.0);
            }
            if let Some(kb) = drained.consumer_rss_kb {
                push("consumer peak RSS", "MB", kb as f64 / 1024.0);
            }
            match variant.bound() {
                Some(_) => capped_seconds.push((name, drained.seconds)),
                None if variant.side == Side::Ours => one_batch_seconds = Some(drained.seconds),
                None => {}
            }
        }
        if let Some(one) = one_batch_seconds {
            for (name, seconds) in capped_seconds {
                measures.push(VS_ONE_BATCH, name, "ratio", seconds / one);
            }
        }
    }

    let measures = measures.into_vec();
    let find_measure = |what: &str, variant: &str| {
        measures
            .iter()
            .find(|m| m.what == what && m.variant == variant)
    };
    let mut limits = Vec::new();
    for variant in &variants {
        if let Some(cap) = variant.bound() {
            let straddling = PRODUCERS * PER_TX;
            limits.push(Limit::of(
                format!(
                    "{}: largest batch (cap {} + {PRODUCERS} straddling transactions)",
                    variant.name,
                    thousands(f64::from(cap))
                ),
                find_measure("max batch size", variant.name),
                f64::from(cap) + straddling as f64,
            ));
        }
    }
    limits.push(Limit::of(
        format!("{OURS}: drain time / one batch's"),
        find_measure(VS_ONE_BATCH, OURS),
        MAX_DRAIN_VS_ONE_BATCH,
    ));

    let series: Vec<Series> = variants
        .iter()
        .zip(samples)
        .map(|(variant, samples)| Series {
            shape: SHAPE,
            variant: variant.name,
            reps: 1,
            events_per_rep: events,
            samples,
        })
        .collect();
    let find = |variant: &str| series.iter().find(|s| s.variant == variant);
    let ratios = vec![
        Ratio::of(
            format!("{OURS} / {REFERENCE}"),
            find(OURS),
            find(REFERENCE),
            None,
        ),
        Ratio::of(
            format!("{OURS} / {ONE_BATCH}"),
            find(OURS),
            find(ONE_BATCH),
            None,
        ),
    ];
    Ok(Report {
        scenario: "backlog",
        notes,
        series,
        ratios,
        measures,
        limits,
    })
}

/// A fresh database for `variant` with the queue (its cap set), its registered consumer and the
/// backlog, inserted with no ticker running.
async fn prepare(
    bench: &Bench<'_>,
    variant: Variant,
    run: u32,
    index: usize,
    events: u64,
) -> Result<Dsn> {
    let (dsn, client) = variant
        .side
        .database(bench.server, &format!("backlog_r{run}_v{index}"))
        .await?;
    let queue = QueueName::new(QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    pgq_core::register_consumer(&client, &queue, &ConsumerName::new(CONSUMER)?).await?;
    if variant.side == Side::Ours {
        match variant.cap {
            Some(cap) => {
                pgq_core::set_queue_config(&client, &queue, QueueSetting::TickerMaxBatch(cap))
                    .await?;
            }
            None => {
                let info = pgq_core::queue_info(&client, Some(&queue)).await?;
                let cap = info.first().and_then(|q| q.ticker_max_batch);
                ensure!(
                    cap == Some(DEFAULT_CAP),
                    "the queue's default ticker_max_batch is {cap:?}, the scenario says \
                     {DEFAULT_CAP}: update DEFAULT_CAP"
                );
            }
        }
    }

    let started = Instant::now();
    PRODUCER.fill(&dsn, events, PRODUCERS).await?;
    tracing::info!(
        events,
        seconds = started.elapsed().as_secs_f64(),
        variant = variant.name,
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
    let mut daemon = Daemon::ours(ticker_bin, dsn, PERIOD, work_dir.path()).await?;
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
    let ticker_rss_kb = daemon.peak_rss_kb();
    daemon.stop(watch).await?;
    let (sizes, busy) = result?;
    Ok(Drained {
        seconds,
        sizes,
        busy_seconds: Some(busy.as_secs_f64()),
        consumer_rss_kb: None,
        ticker_rss_kb: Some(ticker_rss_kb?),
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
        consumer_rss_kb: done.peak_rss_kb,
        ticker_rss_kb: None,
    })
}
