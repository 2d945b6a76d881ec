//! Scenario `e2e`: draining a pre-filled backlog with our consumers, python3-pgq's and a plain
//! SELECT.
//!
//! The backlog is 1,000,000 events of 100 bytes in 100 ticks of 10,000 (with `--quick`,
//! 50,000 in 10 ticks), in one queue of our schema (with `pgq_coop`). Every variant gets its
//! own consumer registered at the tick before the backlog, so each drains the same 100
//! batches: our [`Runner`], our [`CoopRunner`]s with 2 and 4 sub-consumers (tasks in this
//! process), python3-pgq's `Consumer` and `CoopConsumer` with 2 sub-consumer processes
//! (`python/e2e_consumer.py` under `/usr/bin/python3`), and the raw read limit: the same rows
//! by one plain SELECT through tokio-postgres. Every handler reads each event's `ev_data`.
//!
//! The exporter's overhead: our Runner drains again while the `pgq-ticker run` daemon serves
//! the database, once with its exporter off and once with it on (`listen` set) and scraped
//! every second by this process; the two alternate in order from run to run.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context as _, Result};
use pgq_consumer::{ConsumerConfig, CoopRunner, Runner};
use pgq_core::{ConsumerName, Dsn, Line, QueueName, TickId};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_postgres::Client;

use crate::harness::{
    backend_pids, reference, skytools_config, Bench, Counter, Daemon, Part, PythonWorker, WorkDir,
    PYTHON,
};
use crate::report::{Measures, Ratio, Report, Sample, Series};

/// The queue.
const QUEUE: &str = "bench";
/// Bytes of `ev_data` per event.
const DATA_BYTES: u64 = 100;
/// Rows per round trip of the raw read.
const RAW_FETCH: i32 = 10_000;
/// How long a Python worker may take to drain.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(600);
/// The daemon's ticker period in the exporter variants.
const TICKER_PERIOD: Duration = Duration::from_millis(100);
/// How often the exporter is scraped, as Prometheus would at its shortest usual interval.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// How long the daemon's exporter may take to answer its first scrape.
const EXPORTER_TIMEOUT: Duration = Duration::from_secs(15);
/// The lowest acceptable drain rate with the exporter on, over the rate with it off.
const EXPORTER_MIN: f64 = 0.95;

const SHAPE: &str = "drain backlog";
const OURS: &str = "ours Runner";
const OURS_COOP2: &str = "ours CoopRunner ×2";
const OURS_COOP4: &str = "ours CoopRunner ×4";
const PY: &str = "python3-pgq Consumer";
const PY_COOP2: &str = "python3-pgq CoopConsumer ×2";
const RAW: &str = "raw SELECT";
const EXPORTER_OFF: &str = "ours Runner + pgq-ticker, exporter off";
const EXPORTER_ON: &str = "ours Runner + pgq-ticker, exporter on";

// language=SQL
const FILL_TICK: &str = "SELECT count(*) FROM pgq.insert_event_bulk($1, \
     array_fill('t'::text, ARRAY[$2::int]), \
     ARRAY(SELECT lpad(g::text, $3::int, 'x') FROM generate_series($4::int8, $4::int8 + $2::int - 1) g))";
// language=SQL
const TICK: &str = "SELECT pgq.force_tick($1), pgq.ticker($1)";
// language=SQL
const LAST_TICK: &str = "SELECT max(t.tick_id) FROM pgq.tick t JOIN pgq.queue q \
     ON q.queue_id = t.tick_queue WHERE q.queue_name = $1";
// language=SQL
const QUEUE_TABLE: &str = "SELECT queue_data_pfx FROM pgq.queue WHERE queue_name = $1";

/// Backlog size.
#[derive(Debug, Clone, Copy)]
struct Backlog {
    ticks: u32,
    per_tick: u32,
}

impl Backlog {
    fn new(small: bool) -> Backlog {
        if small {
            Backlog {
                ticks: 10,
                per_tick: 5_000,
            }
        } else {
            Backlog {
                ticks: 100,
                per_tick: 10_000,
            }
        }
    }

    fn events(self) -> u64 {
        u64::from(self.ticks) * u64::from(self.per_tick)
    }
}

/// How the figures are made.
fn method(backlog: Backlog, runs: u32) -> Vec<String> {
    let (period, scrape) = (TICKER_PERIOD.as_millis(), SCRAPE_EVERY.as_secs());
    vec![
        format!(
            "Backlog: {} events with {DATA_BYTES}-byte ev_data in {} ticks of {} (one \
             transaction each), then VACUUM ANALYZE; every variant drains all of it with a \
             consumer of its own registered at the tick before it.",
            backlog.events(),
            backlog.ticks,
            backlog.per_tick
        ),
        format!(
            "{runs} run(s); within a run the variants go in the order listed; an untimed raw \
             read warms the cache first. The clock runs from the first batch request (after \
             connecting) until the last consumer finds no batch."
        ),
        format!(
            "`{OURS}` and `ours CoopRunner ×N` (N tasks in this process) use the default \
             settings (1,000 events per cursor fetch); each handler sums ev_data lengths. \
             `python3-pgq …` run `python/e2e_consumer.py` under {PYTHON} with the default \
             pgq_lazy_fetch (300), one process per consumer."
        ),
        format!(
            "`{RAW}`: one SELECT of every event column from the queue's event tables, read \
             through a portal {RAW_FETCH} rows per round trip, decoding every column."
        ),
        format!(
            "`{EXPORTER_OFF}` and `{EXPORTER_ON}`: `{OURS}` while `pgq-ticker run` (period \
             {period} ms) serves the database; on, its `listen` is set and this process GETs \
             `/metrics` every {scrape} s during the drain (each answer checked to be 200). The \
             clock starts once the daemon is connected (and, on, has answered a first scrape). \
             The two swap order from one run to the next."
        ),
    ]
}

/// One variant: what drains the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Ours,
    OursCoop(u32),
    Python,
    PythonCoop(u32),
    Raw,
    /// Our Runner beside the ticker daemon, its exporter on (`true`) or off.
    OursTicker(bool),
}

impl Variant {
    /// Every variant, in the order each run measures them.
    const ALL: [Variant; 8] = [
        Variant::Ours,
        Variant::OursCoop(2),
        Variant::OursCoop(4),
        Variant::Python,
        Variant::PythonCoop(2),
        Variant::Raw,
        Variant::OursTicker(false),
        Variant::OursTicker(true),
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::Ours => OURS,
            Variant::OursCoop(2) => OURS_COOP2,
            Variant::OursCoop(_) => OURS_COOP4,
            Variant::Python => PY,
            Variant::PythonCoop(_) => PY_COOP2,
            Variant::Raw => RAW,
            Variant::OursTicker(exporter) => {
                if exporter {
                    EXPORTER_ON
                } else {
                    EXPORTER_OFF
                }
            }
        }
    }

    fn is_python(self) -> bool {
        matches!(self, Variant::Python | Variant::PythonCoop(_))
    }
}

/// What one drain did.
struct Drained {
    events: u64,
    bytes: u64,
    seconds: f64,
    /// The largest peak RSS of a Python worker, in kB.
    python_rss_kb: Option<u64>,
}

impl Drained {
    /// What `counter` counted since `started`.
    fn counted(counter: &Counter, started: Instant) -> Drained {
        Drained {
            seconds: started.elapsed().as_secs_f64(),
            events: counter.events(),
            bytes: counter.bytes(),
            python_rss_kb: None,
        }
    }
}

/// Runs the scenario on a scratch database of the bench's server.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let backlog = Backlog::new(bench.plan.small);
    let mut notes = method(backlog, bench.plan.runs);
    let work_dir = WorkDir::new("e2e")?;
    let filled = Filled::setup(bench, backlog, &work_dir).await?;
    let ticker_bin = bench.ticker_binary()?;
    let python = reference(
        bench.server,
        &[Part::PythonPgq],
        "the python3-pgq variants are skipped",
        &mut notes,
    )
    .await?;
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| python || !v.is_python())
        .collect();

    filled.raw().await?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut rss = Measures::default();
    for run in 1..=bench.plan.runs {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if run % 2 == 0 {
            // the exporter variants swap places, so neither always runs second
            let on = variants
                .iter()
                .position(|&v| v == Variant::OursTicker(true));
            let off = variants
                .iter()
                .position(|&v| v == Variant::OursTicker(false));
            if let Some((on, off)) = on.zip(off) {
                order.swap(on, off);
            }
        }
        for i in order {
            let variant = variants[i];
            let drained = filled.drain(variant, run, &ticker_bin).await?;
            ensure!(
                drained.events == backlog.events()
                    && drained.bytes == backlog.events() * DATA_BYTES,
                "{}: {} events ({} bytes) drained, {} expected",
                variant.label(),
                drained.events,
                drained.bytes,
                backlog.events()
            );
            let sample = Sample::new(run, drained.events, drained.seconds);
            tracing::info!(
                run,
                variant = variant.label(),
                events_per_sec = sample.events_per_sec.round(),
                "drained"
            );
            samples[i].push(sample);
            if let Some(kb) = drained.python_rss_kb {
                let what = format!("{} peak RSS", variant.label());
                rss.push(&what, "python3-pgq", "MB", kb as f64 / 1024.0);
            }
        }
    }

    let series: Vec<Series> = variants
        .iter()
        .zip(samples)
        .map(|(v, samples)| Series {
            shape: SHAPE,
            variant: v.label(),
            reps: 1,
            events_per_rep: backlog.events(),
            samples,
        })
        .collect();
    Ok(Report {
        scenario: "e2e",
        notes,
        ratios: ratios(&series),
        series,
        measures: rss.into_vec(),
        limits: Vec::new(),
    })
}

/// The ratios of medians the scenario reports, three with a target.
fn ratios(series: &[Series]) -> Vec<Ratio> {
    let find = |variant: &str| series.iter().find(|s| s.variant == variant);
    vec![
        Ratio::of(format!("{OURS} / {PY}"), find(OURS), find(PY), Some(1.5)),
        Ratio::of(format!("{OURS} / {RAW}"), find(OURS), find(RAW), Some(0.7)),
        Ratio::of(
            format!("{OURS_COOP2} / {PY_COOP2}"),
            find(OURS_COOP2),
            find(PY_COOP2),
            Some(1.2),
        ),
        Ratio::of(
            format!("{OURS_COOP2} / {OURS}"),
            find(OURS_COOP2),
            find(OURS),
            None,
        ),
        Ratio::of(
            format!("{OURS_COOP4} / {OURS}"),
            find(OURS_COOP4),
            find(OURS),
            None,
        ),
        Ratio::of(format!("{PY} / {RAW}"), find(PY), find(RAW), None),
        Ratio::of(
            format!("{EXPORTER_ON} / {EXPORTER_OFF}"),
            find(EXPORTER_ON),
            find(EXPORTER_OFF),
            Some(EXPORTER_MIN),
        ),
    ]
}

/// The e2e database and its backlog.
struct Filled<'a> {
    dsn: Dsn,
    client: Client,
    queue: QueueName,
    /// The queue's event tables (their inheritance parent), quoted.
    table: String,
    /// The tick before the backlog, where every consumer is registered.
    start_tick: TickId,
    /// Where the Python workers' configurations and logs go.
    work_dir: &'a WorkDir,
    /// The server's maintenance database, to watch the daemon's backends from.
    maintenance: Dsn,
}

impl<'a> Filled<'a> {
    /// A scratch database with our pgq and pgq_coop schemas, queue [`QUEUE`] and the backlog.
    async fn setup(bench: &Bench<'_>, backlog: Backlog, work_dir: &'a WorkDir) -> Result<Self> {
        let dsn = bench.server.scratch_db("e2e").await?;
        let mut client = dsn
            .connect()
            .await
            .context("connecting to the e2e database")?;
        pgq_core::install(&mut client, &[Line::Pgq, Line::PgqCoop])
            .await
            .context("installing our pgq and pgq_coop schemas")?;
        let queue = QueueName::new(QUEUE)?;
        pgq_core::create_queue(&client, &queue).await?;
        client.execute(TICK, &[&QUEUE]).await?;
        let start_tick: i64 = client
            .query_one(LAST_TICK, &[&QUEUE])
            .await?
            .get::<_, Option<i64>>(0)
            .context("the queue has no tick")?;
        let filling = Instant::now();
        fill(&client, backlog).await?;
        let table: String = client.query_one(QUEUE_TABLE, &[&QUEUE]).await?.get(0);
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
        tracing::info!(
            events = backlog.events(),
            seconds = filling.elapsed().as_secs_f64(),
            "backlog filled"
        );
        Ok(Filled {
            dsn,
            client,
            queue,
            table,
            start_tick: TickId(start_tick),
            work_dir,
            maintenance: bench.server.maintenance().clone(),
        })
    }

    async fn drain(&self, variant: Variant, run: u32, ticker_bin: &Path) -> Result<Drained> {
        match variant {
            Variant::Ours => self.ours(run).await,
            Variant::OursTicker(exporter) => self.ours_ticker(run, ticker_bin, exporter).await,
            Variant::OursCoop(subs) => self.ours_coop(run, subs).await,
            Variant::Python => self.python(run).await,
            Variant::PythonCoop(subs) => self.python_coop(run, subs).await,
            Variant::Raw => self.raw().await,
        }
    }

    /// Registers `name` at the tick before the backlog.
    async fn register(&self, name: &str) -> Result<()> {
        pgq_core::register_consumer_at(
            &self.client,
            &self.queue,
            &ConsumerName::new(name)?,
            self.start_tick,
        )
        .await
        .with_context(|| format!("registering {name}"))?;
        Ok(())
    }

    /// Registers group `name` at the tick before the backlog, with sub-consumers `s1`..`sN`.
    async fn register_group(&self, name: &str, subs: u32) -> Result<Vec<String>> {
        self.register(name).await?;
        let group = ConsumerName::new(name)?;
        let mut names = Vec::new();
        for i in 1..=subs {
            let sub = format!("s{i}");
            pgq_core::coop::register_subconsumer(
                &self.client,
                &self.queue,
                &group,
                &ConsumerName::new(&sub)?,
            )
            .await
            .with_context(|| format!("registering {name}.{sub}"))?;
            names.push(sub);
        }
        Ok(names)
    }

    async fn ours(&self, run: u32) -> Result<Drained> {
        let name = format!("ours_r{run}");
        self.register(&name).await?;
        let counter = Arc::new(Counter::default());
        let config = ConsumerConfig::builder(self.queue.clone(), ConsumerName::new(&name)?).build();
        let mut runner = Runner::connect(&self.dsn, config, counter.clone()).await?;
        let started = Instant::now();
        while runner.process_next_batch().await?.is_some() {}
        Ok(Drained::counted(&counter, started))
    }

    /// [`Filled::ours`] while our ticker daemon serves the database, its exporter on (and
    /// scraped every [`SCRAPE_EVERY`]) or off.
    async fn ours_ticker(&self, run: u32, ticker_bin: &Path, exporter: bool) -> Result<Drained> {
        let name = format!(
            "ours_exporter_{}_r{run}",
            if exporter { "on" } else { "off" }
        );
        self.register(&name).await?;
        let counter = Arc::new(Counter::default());
        let config = ConsumerConfig::builder(self.queue.clone(), ConsumerName::new(&name)?).build();
        let mut runner = Runner::connect(&self.dsn, config, counter.clone()).await?;
        let listen = if exporter {
            Some(free_address()?)
        } else {
            None
        };
        let watch = self.maintenance.connect().await?;
        let ours = backend_pids(&watch, self.dsn.dbname()).await?;
        let mut daemon = Daemon::ours_with(
            ticker_bin,
            &self.dsn,
            TICKER_PERIOD,
            self.work_dir.path(),
            listen.as_deref(),
        )
        .await?;
        let result = async {
            daemon.wait_connected(&watch, &ours).await?;
            let scraper = match &listen {
                Some(address) => Some(Scraper::start(address).await?),
                None => None,
            };
            let started = Instant::now();
            while runner.process_next_batch().await?.is_some() {}
            let drained = Drained::counted(&counter, started);
            if let Some(scraper) = scraper {
                let scrapes = scraper.stop().await?;
                tracing::info!(run, scrapes, "exporter scraped");
            }
            anyhow::Ok(drained)
        }
        .await;
        daemon.stop_beside(&watch, &ours).await?;
        result
    }

    async fn ours_coop(&self, run: u32, subs: u32) -> Result<Drained> {
        let group = format!("ours_coop{subs}_r{run}");
        let names = self.register_group(&group, subs).await?;
        let counter = Arc::new(Counter::default());
        let config =
            ConsumerConfig::builder(self.queue.clone(), ConsumerName::new(&group)?).build();
        let mut runners = Vec::new();
        for sub in names {
            runners.push(
                CoopRunner::connect(
                    &self.dsn,
                    config.clone(),
                    ConsumerName::new(sub)?,
                    None,
                    counter.clone(),
                )
                .await?,
            );
        }
        let started = Instant::now();
        let mut tasks: tokio::task::JoinSet<pgq_consumer::Result<()>> = tokio::task::JoinSet::new();
        for mut runner in runners {
            tasks.spawn(async move {
                while runner.process_next_batch().await?.is_some() {}
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(Drained::counted(&counter, started))
    }

    async fn python(&self, run: u32) -> Result<Drained> {
        let name = format!("py_r{run}");
        self.register(&name).await?;
        let worker = self.python_worker("plain", &name, &name, None).await?;
        go_all(vec![worker]).await
    }

    async fn python_coop(&self, run: u32, subs: u32) -> Result<Drained> {
        let group = format!("py_coop{subs}_r{run}");
        let names = self.register_group(&group, subs).await?;
        let mut workers = Vec::new();
        for sub in names {
            let job = format!("{group}_{sub}");
            workers.push(self.python_worker("coop", &job, &group, Some(&sub)).await?);
        }
        go_all(workers).await
    }

    /// Starts `python/e2e_consumer.py` as `kind` (`plain` or `coop`), job `job` of `consumer`
    /// (sub-consumer `sub` of that group).
    async fn python_worker(
        &self,
        kind: &str,
        job: &str,
        consumer: &str,
        sub: Option<&str>,
    ) -> Result<PythonWorker> {
        let mut settings = vec![("queue_name", QUEUE), ("consumer_name", consumer)];
        settings.extend(sub.map(|sub| ("subconsumer_name", sub)));
        let dir = self.work_dir.path();
        let config = skytools_config(dir, "e2e_consumer", job, &self.dsn, &settings)?;
        PythonWorker::start(
            "e2e_consumer.py",
            [Path::new(kind), config.as_path()],
            &self.dsn,
        )
        .await
    }

    /// Reads every event row with one SELECT, decoding each column.
    async fn raw(&self) -> Result<Drained> {
        let mut client = self.dsn.connect().await?;
        let sql = format!(
            "SELECT ev_id, ev_time, ev_txid, ev_retry, ev_type, ev_data, ev_extra1, ev_extra2, \
                    ev_extra3, ev_extra4 FROM {}",
            self.table
        );
        let started = Instant::now();
        let tx = client.transaction().await?;
        let statement = tx.prepare(&sql).await?;
        let portal = tx.bind(&statement, &[]).await?;
        let (mut events, mut bytes) = (0_u64, 0_u64);
        loop {
            let rows = tx.query_portal(&portal, RAW_FETCH).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let _id: i64 = row.try_get(0)?;
                let _time: SystemTime = row.try_get(1)?;
                let _txid: i64 = row.try_get(2)?;
                let _retry: Option<i32> = row.try_get(3)?;
                let _type: Option<String> = row.try_get(4)?;
                let data: Option<String> = row.try_get(5)?;
                for extra in 6..10 {
                    let _extra: Option<String> = row.try_get(extra)?;
                }
                events += 1;
                bytes += data.map_or(0, |d| d.len() as u64);
            }
        }
        tx.commit().await?;
        Ok(Drained {
            events,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            python_rss_kb: None,
        })
    }
}

/// What a Python worker prints at the end.
#[derive(Debug, Deserialize)]
struct PythonDone {
    events: u64,
    bytes: u64,
    start: f64,
    end: f64,
    peak_rss_kb: Option<u64>,
}

/// Lets every worker go at once, and sums what they did, timed from the first start to the
/// last end.
async fn go_all(mut workers: Vec<PythonWorker>) -> Result<Drained> {
    for worker in &mut workers {
        worker.go().await?;
    }
    let mut done = Vec::new();
    for worker in workers {
        done.push(worker.done::<PythonDone>(PYTHON_TIMEOUT).await?);
    }
    let start = done.iter().map(|d| d.start).fold(f64::INFINITY, f64::min);
    let end = done.iter().map(|d| d.end).fold(f64::NEG_INFINITY, f64::max);
    Ok(Drained {
        events: done.iter().map(|d| d.events).sum(),
        bytes: done.iter().map(|d| d.bytes).sum(),
        seconds: end - start,
        python_rss_kb: done.iter().filter_map(|d| d.peak_rss_kb).max(),
    })
}

/// Inserts the backlog: each tick's events in one transaction, then a tick.
async fn fill(client: &Client, backlog: Backlog) -> Result<()> {
    let per_tick = i32::try_from(backlog.per_tick)?;
    let bytes = i32::try_from(DATA_BYTES)?;
    for tick in 0..backlog.ticks {
        let first = i64::from(tick) * i64::from(per_tick) + 1;
        let inserted: i64 = client
            .query_one(FILL_TICK, &[&QUEUE, &per_tick, &bytes, &first])
            .await?
            .get(0);
        ensure!(
            inserted == i64::from(per_tick),
            "{inserted} events inserted"
        );
        client.execute(TICK, &[&QUEUE]).await?;
    }
    Ok(())
}

/// An address on 127.0.0.1 with a port nobody listens on right now.
fn free_address() -> Result<String> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(socket.local_addr()?.to_string())
}

/// GETs `/metrics` from an exporter every [`SCRAPE_EVERY`], as Prometheus would.
struct Scraper {
    task: tokio::task::JoinHandle<Result<()>>,
    scrapes: Arc<AtomicU64>,
}

impl Scraper {
    /// Waits until the exporter at `address` answers, then scrapes it in the background.
    async fn start(address: &str) -> Result<Scraper> {
        let deadline = Instant::now() + EXPORTER_TIMEOUT;
        while let Err(e) = scrape(address).await {
            ensure!(
                Instant::now() < deadline,
                "the exporter on {address} did not answer: {e:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let scrapes = Arc::new(AtomicU64::new(1));
        let (address, counted) = (address.to_owned(), scrapes.clone());
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(SCRAPE_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                scrape(&address).await?;
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Scraper { task, scrapes })
    }

    /// Stops scraping; how many scrapes there were, or the first failed one's error.
    async fn stop(self) -> Result<u64> {
        if self.task.is_finished() {
            self.task.await??;
        } else {
            self.task.abort();
        }
        Ok(self.scrapes.load(Ordering::Relaxed))
    }
}

/// One `GET /metrics` from `address`; an error unless the answer is 200 with a body.
async fn scrape(address: &str) -> Result<()> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    ensure!(
        head.starts_with("HTTP/1.1 200") && !body.is_empty(),
        "GET /metrics from {address}: {head}"
    );
    Ok(())
}
