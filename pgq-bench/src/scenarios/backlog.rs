//! Scenario `backlog`: a ticker outage, then the drain.
//!
//! With no ticker running, 4 producers insert 500,000 events of 100 bytes (with `--quick`,
//! 20,000) in transactions of 100 events into a queue whose consumer is registered already.
//! Then the ticker starts and one consumer drains the queue: ours is the `pgq-ticker run`
//! daemon and our [`Runner`] (in this process) on our schema; the reference is `pgqd` and
//! python3-pgq's `Consumer` (`python/backlog_consumer.py` under `/usr/bin/python3`) on the
//! original extension. The clock runs from the daemon's start until the consumer has
//! processed every event.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context as _, Result};
use pgq_consumer::{async_trait, BatchHandle, Consumer, ConsumerConfig, HandlerError, Runner};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Dsn, Event, Line, QueueName};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

use crate::cli::Plan;
use crate::reference::{connstr, extension_available, python_can_import, PYTHON};
use crate::report::{median_of_sorted, Measure, Ratio, Report, Sample, Series};
use crate::server::Server;
use crate::ticker::{ticker_binary, Daemon};

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
/// Both daemons' ticker period: ours as a duration, pgqd's in seconds.
const PERIOD_OURS: &str = "100ms";
const PERIOD_PGQD: &str = "0.1";
/// How long a drain may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

const SHAPE: &str = "drain after outage";
const OURS: &str = "ours (pgq-ticker + Runner)";
const REFERENCE: &str = "reference (pgqd + python3-pgq Consumer)";

// language=SQL
const PRODUCE: &str = "SELECT count(pgq.insert_event($1, 't', lpad(g::text, $2::int, 'x'))) \
     FROM generate_series($3::int8, $4::int8) g";
// language=SQL
const CREATE_QUEUE: &str = "SELECT pgq.create_queue($1)";
// language=SQL
const REGISTER: &str = "SELECT pgq.register_consumer($1, $2)";

/// Which side drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Reference,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Ours => OURS,
            Side::Reference => REFERENCE,
        }
    }
}

/// What one drain did.
struct Drained {
    seconds: f64,
    sizes: Vec<u64>,
    /// Ours: the time spent in batches (from taking each to its commit), in seconds.
    busy_seconds: Option<f64>,
    peak_rss_kb: Option<u64>,
}

/// Figures per side, over runs.
struct Figures {
    samples: Vec<Sample>,
    batches: Vec<f64>,
    median_batch: Vec<f64>,
    max_batch: Vec<f64>,
    busy: Vec<f64>,
    rss_mb: Vec<f64>,
}

/// Runs the scenario on scratch databases of `server`.
pub(crate) async fn run(server: &Server, plan: Plan) -> Result<Report> {
    let events: u64 = if plan.small { 20_000 } else { 500_000 };
    let work_dir = std::env::temp_dir().join(format!("pgq-bench-backlog-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let result = run_in(server, plan, events, &work_dir).await;
    if let Err(err) = std::fs::remove_dir_all(&work_dir) {
        tracing::warn!(%err, dir = %work_dir.display(), "cannot remove the work directory");
    }
    result
}

async fn run_in(server: &Server, plan: Plan, events: u64, work_dir: &Path) -> Result<Report> {
    let ticker_bin = ticker_binary().await?;
    let mut notes = vec![
        format!(
            "Outage: no ticker runs while {PRODUCERS} producers insert {events} events of \
             {DATA_BYTES} bytes in transactions of {PER_TX} events; the consumer was \
             registered before. Then the daemon starts (ticker period {PERIOD_OURS}) and one \
             consumer drains; the clock runs from the daemon's start to the last event \
             processed. Each side gets a fresh database per run."
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
    ];
    let reference = extension_available(server).await?
        && Path::new("/usr/bin/pgqd").is_file()
        && python_can_import("pgq").await;
    if !reference {
        let note = "REFERENCE MISSING: the pgq extension, /usr/bin/pgqd or python3-pgq under \
                    /usr/bin/python3 is not available; the reference is skipped.";
        eprintln!("\n*** {note} ***\n");
        notes.push(format!("**{note}**"));
    }
    let sides: Vec<Side> = [Side::Ours, Side::Reference]
        .into_iter()
        .filter(|&s| reference || s == Side::Ours)
        .collect();
    let mut figures: Vec<Figures> = sides
        .iter()
        .map(|_| Figures {
            samples: Vec::new(),
            batches: Vec::new(),
            median_batch: Vec::new(),
            max_batch: Vec::new(),
            busy: Vec::new(),
            rss_mb: Vec::new(),
        })
        .collect();
    for run in 1..=plan.runs {
        for (i, &side) in sides.iter().enumerate() {
            let dsn = prepare(server, side, run, events).await?;
            let drained = match side {
                Side::Ours => drain_ours(server, &dsn, &ticker_bin, events, work_dir).await?,
                Side::Reference => drain_reference(server, &dsn, events, work_dir).await?,
            };
            let total: u64 = drained.sizes.iter().sum();
            ensure!(
                total == events,
                "{}: {total} events drained, {events} expected",
                side.label()
            );
            let mut sizes: Vec<f64> = drained.sizes.iter().map(|&s| s as f64).collect();
            sizes.sort_unstable_by(f64::total_cmp);
            tracing::info!(
                run,
                side = side.label(),
                seconds = drained.seconds,
                batches = sizes.len(),
                "drained"
            );
            let f = &mut figures[i];
            f.samples.push(Sample {
                run,
                events,
                seconds: drained.seconds,
                events_per_sec: events as f64 / drained.seconds,
            });
            f.batches.push(sizes.len() as f64);
            f.median_batch.push(median_of_sorted(&sizes));
            f.max_batch.push(sizes.last().copied().unwrap_or(0.0));
            if let Some(busy) = drained.busy_seconds {
                f.busy.push(busy);
            }
            if let Some(kb) = drained.peak_rss_kb {
                f.rss_mb.push(kb as f64 / 1024.0);
            }
        }
    }

    let mut series = Vec::new();
    let mut measures = Vec::new();
    for (side, f) in sides.iter().zip(figures) {
        let variant = side.label();
        let drain_seconds = f.samples.iter().map(|s| s.seconds).collect();
        series.push(Series {
            shape: SHAPE,
            variant,
            reps: 1,
            events_per_rep: events,
            samples: f.samples,
        });
        for (what, metric, samples) in [
            ("drain time", "s", drain_seconds),
            ("batches", "batches", f.batches),
            ("median batch size", "events", f.median_batch),
            ("max batch size", "events", f.max_batch),
            ("consumer time in batches", "s", f.busy),
            ("consumer peak RSS", "MB", f.rss_mb),
        ] {
            if !samples.is_empty() {
                measures.push(Measure {
                    what: what.to_owned(),
                    variant,
                    metric,
                    samples,
                });
            }
        }
    }
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
        measures,
        limits: Vec::new(),
    })
}

/// A fresh database of `side` with the queue, its registered consumer and the backlog,
/// inserted with no ticker running.
async fn prepare(server: &Server, side: Side, run: u32, events: u64) -> Result<Dsn> {
    let role = match side {
        Side::Ours => format!("backlog_ours_r{run}"),
        Side::Reference => format!("backlog_ref_r{run}"),
    };
    let dsn = server.scratch_db(&role).await?;
    let mut client = dsn.connect().await?;
    match side {
        Side::Ours => {
            pgq_core::install(&mut client, &[Line::Pgq])
                .await
                .context("installing our pgq schema")?;
        }
        Side::Reference => {
            client
                .batch_execute("CREATE EXTENSION pgq")
                .await
                .context("creating the pgq extension")?;
        }
    }
    client.query_one(CREATE_QUEUE, &[&QUEUE]).await?;
    client.query_one(REGISTER, &[&QUEUE, &CONSUMER]).await?;

    let started = Instant::now();
    let transactions = events.div_ceil(PER_TX);
    let mut producers = tokio::task::JoinSet::new();
    for producer in 0..PRODUCERS {
        let dsn = dsn.clone();
        producers.spawn(async move {
            let client = dsn.connect().await?;
            let produce = client.prepare(PRODUCE).await?;
            let mut inserted = 0_i64;
            for tx in (producer..transactions).step_by(usize::try_from(PRODUCERS)?) {
                let first = i64::try_from(tx * PER_TX + 1)?;
                let last = i64::try_from(((tx + 1) * PER_TX).min(events))?;
                let n: i64 = client
                    .query_one(&produce, &[&QUEUE, &DATA_BYTES, &first, &last])
                    .await?
                    .get(0);
                inserted += n;
            }
            anyhow::Ok(inserted)
        });
    }
    let mut inserted = 0_i64;
    while let Some(done) = producers.join_next().await {
        inserted += done??;
    }
    ensure!(
        u64::try_from(inserted)? == events,
        "{inserted} events inserted, {events} expected"
    );
    tracing::info!(
        events,
        seconds = started.elapsed().as_secs_f64(),
        side = side.label(),
        "backlog inserted"
    );
    Ok(dsn)
}

/// Counts events and remembers each batch's size.
#[derive(Debug, Default)]
struct Count {
    events: AtomicU64,
}

impl Count {
    fn add(&self, events: &[Event]) {
        let bytes: usize = events
            .iter()
            .map(|e| e.ev_data.as_ref().map_or(0, String::len))
            .sum();
        std::hint::black_box(bytes);
        self.events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl Consumer for Count {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            self.add(&events);
        }
        Ok(())
    }

    async fn process_event(&self, _: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        self.add(std::slice::from_ref(event));
        Ok(())
    }
}

/// Starts our daemon and drains with our Runner.
async fn drain_ours(
    server: &Server,
    dsn: &Dsn,
    ticker_bin: &Path,
    events: u64,
    work_dir: &Path,
) -> Result<Drained> {
    let watch = server.maintenance().connect().await?;
    let count = Arc::new(Count::default());
    let config = ConsumerConfig::builder(QueueName::new(QUEUE)?, ConsumerName::new(CONSUMER)?)
        .register(false)
        .build();
    let mut runner = Runner::connect(dsn, config, count.clone()).await?;
    let started = Instant::now();
    let daemon = Daemon::ours(ticker_bin, dsn, PERIOD_OURS, work_dir).await?;
    let result = async {
        let (mut sizes, mut busy) = (Vec::new(), Duration::ZERO);
        while count.events.load(Ordering::Relaxed) < events {
            ensure!(
                started.elapsed() < DRAIN_TIMEOUT,
                "{} of {events} events drained",
                count.events.load(Ordering::Relaxed)
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
    daemon.stop(&watch).await?;
    let (sizes, busy) = result?;
    Ok(Drained {
        seconds,
        sizes,
        busy_seconds: Some(busy.as_secs_f64()),
        peak_rss_kb: None,
    })
}

/// What the Python worker printed at the end.
#[derive(Debug, Deserialize)]
struct PythonDone {
    sizes: Vec<u64>,
    end: f64,
    peak_rss_kb: Option<u64>,
}

/// Starts pgqd and drains with python3-pgq's Consumer.
async fn drain_reference(
    server: &Server,
    dsn: &Dsn,
    events: u64,
    work_dir: &Path,
) -> Result<Drained> {
    let watch = server.maintenance().connect().await?;
    let config = work_dir.join(format!("{}.ini", dsn.dbname()));
    let text = format!(
        "[backlog_consumer]\njob_name = {name}\nlogfile = {log}\npidfile = {pid}\ndb = {db}\n\
         queue_name = {QUEUE}\nconsumer_name = {CONSUMER}\n",
        name = dsn.dbname(),
        log = work_dir.join("backlog_consumer.log").display(),
        pid = work_dir.join("backlog_consumer.pid").display(),
        db = connstr(dsn),
    );
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/backlog_consumer.py");
    let mut command = Command::new(PYTHON);
    command
        .arg(&script)
        .arg(&config)
        .arg(events.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(password) = dsn.config().get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {PYTHON} {}", script.display()))?;
    let mut stdin = child.stdin.take().context("the worker's stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("the worker's stdout")?).lines();
    let ready = stdout.next_line().await?;
    ensure!(
        ready.as_deref() == Some("ready"),
        "the python worker did not get ready: {ready:?}"
    );

    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let daemon = Daemon::pgqd(dsn, PERIOD_PGQD, work_dir).await?;
    let result = async {
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        let line = tokio::time::timeout(DRAIN_TIMEOUT, stdout.next_line())
            .await
            .context("the python worker did not finish in time")??
            .context("the python worker exited early")?;
        let status = child.wait().await?;
        ensure!(status.success(), "python worker: {status}");
        anyhow::Ok(serde_json::from_str::<PythonDone>(&line)?)
    }
    .await;
    daemon.stop(&watch).await?;
    let done = result?;
    Ok(Drained {
        seconds: done.end - started,
        sizes: done.sizes,
        busy_seconds: None,
        peak_rss_kb: done.peak_rss_kb,
    })
}
