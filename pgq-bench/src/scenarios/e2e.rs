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

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{bail, ensure, Context as _, Result};
use pgq_consumer::{
    async_trait, BatchHandle, Consumer, ConsumerConfig, CoopRunner, HandlerError, Runner,
};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Dsn, Event, Line, QueueName};
use serde::Deserialize;
use tokio_postgres::Client;

use crate::cli::Plan;
use crate::reference::{connstr, python_can_import, PYTHON};
use crate::report::{Measure, Ratio, Report, Sample, Series};
use crate::server::Server;

/// The queue.
const QUEUE: &str = "bench";
/// Bytes of `ev_data` per event.
const DATA_BYTES: u64 = 100;
/// Rows per round trip of the raw read.
const RAW_FETCH: i32 = 10_000;

const SHAPE: &str = "drain backlog";
const OURS: &str = "ours Runner";
const OURS_COOP2: &str = "ours CoopRunner ×2";
const OURS_COOP4: &str = "ours CoopRunner ×4";
const PY: &str = "python3-pgq Consumer";
const PY_COOP2: &str = "python3-pgq CoopConsumer ×2";
const RAW: &str = "raw SELECT";

// language=SQL
const REGISTER_AT: &str = "SELECT pgq.register_consumer_at($1, $2, $3)";
// language=SQL
const REGISTER_SUB: &str = "SELECT pgq_coop.register_subconsumer($1, $2, $3)";
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
    fn events(self) -> u64 {
        u64::from(self.ticks) * u64::from(self.per_tick)
    }
}

/// One variant: what drains the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Ours,
    OursCoop(u32),
    Python,
    PythonCoop(u32),
    Raw,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Ours => OURS,
            Variant::OursCoop(2) => OURS_COOP2,
            Variant::OursCoop(_) => OURS_COOP4,
            Variant::Python => PY,
            Variant::PythonCoop(_) => PY_COOP2,
            Variant::Raw => RAW,
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

/// Runs the scenario on a scratch database of `server`.
pub(crate) async fn run(server: &Server, plan: Plan) -> Result<Report> {
    let backlog = if plan.small {
        Backlog {
            ticks: 10,
            per_tick: 5_000,
        }
    } else {
        Backlog {
            ticks: 100,
            per_tick: 10_000,
        }
    };
    let dsn = server.scratch_db("e2e").await?;
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

    let mut notes = vec![
        format!(
            "Backlog: {} events with {DATA_BYTES}-byte ev_data in {} ticks of {} (one \
             transaction each), then VACUUM ANALYZE; every variant drains all of it with a \
             consumer of its own registered at the tick before it.",
            backlog.events(),
            backlog.ticks,
            backlog.per_tick
        ),
        format!(
            "{} run(s); within a run the variants go in the order listed; an untimed raw read \
             warms the cache first. The clock runs from the first batch request (after \
             connecting) until the last consumer finds no batch.",
            plan.runs
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
    ];
    let python = python_can_import("pgq").await;
    if !python {
        let note = "REFERENCE MISSING: /usr/bin/python3 cannot import pgq (install \
                    python3-pgq); the python3-pgq variants are skipped.";
        eprintln!("\n*** {note} ***\n");
        notes.push(format!("**{note}**"));
    }
    let variants: Vec<Variant> = [
        Variant::Ours,
        Variant::OursCoop(2),
        Variant::OursCoop(4),
        Variant::Python,
        Variant::PythonCoop(2),
        Variant::Raw,
    ]
    .into_iter()
    .filter(|v| python || !v.is_python())
    .collect();

    let scratch = Scratch::new()?;
    let bench = Bench {
        dsn: &dsn,
        client: &client,
        queue: &queue,
        table: &table,
        start_tick,
        scratch: &scratch,
    };
    bench.raw().await?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut rss: Vec<Measure> = Vec::new();
    for run in 1..=plan.runs {
        for (i, &variant) in variants.iter().enumerate() {
            let drained = bench.drain(variant, run).await?;
            ensure!(
                drained.events == backlog.events()
                    && drained.bytes == backlog.events() * DATA_BYTES,
                "{}: {} events ({} bytes) drained, {} expected",
                variant.label(),
                drained.events,
                drained.bytes,
                backlog.events()
            );
            let events_per_sec = drained.events as f64 / drained.seconds;
            tracing::info!(
                run,
                variant = variant.label(),
                events_per_sec = events_per_sec.round(),
                "drained"
            );
            samples[i].push(Sample {
                run,
                events: drained.events,
                seconds: drained.seconds,
                events_per_sec,
            });
            if let Some(kb) = drained.python_rss_kb {
                let what = format!("{} peak RSS", variant.label());
                let pos = rss.iter().position(|m| m.what == what).unwrap_or_else(|| {
                    rss.push(Measure {
                        what,
                        variant: "python3-pgq",
                        metric: "MB",
                        samples: Vec::new(),
                    });
                    rss.len() - 1
                });
                rss[pos].samples.push(kb as f64 / 1024.0);
            }
        }
    }
    scratch.remove();

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
    let find = |variant: &str| series.iter().find(|s| s.variant == variant);
    let ratios = vec![
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
    ];
    Ok(Report {
        scenario: "e2e",
        notes,
        series,
        ratios,
        measures: rss,
        limits: Vec::new(),
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

/// Counts events and their `ev_data` bytes.
#[derive(Debug, Default)]
struct Tally {
    events: AtomicU64,
    bytes: AtomicU64,
}

impl Tally {
    fn add(&self, events: &[Event]) {
        let bytes: usize = events
            .iter()
            .map(|e| e.ev_data.as_ref().map_or(0, String::len))
            .sum();
        self.events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl Consumer for Tally {
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

/// The e2e database and its backlog.
struct Bench<'a> {
    dsn: &'a Dsn,
    client: &'a Client,
    queue: &'a QueueName,
    /// The queue's event tables (their inheritance parent), quoted.
    table: &'a str,
    start_tick: i64,
    scratch: &'a Scratch,
}

impl Bench<'_> {
    async fn drain(&self, variant: Variant, run: u32) -> Result<Drained> {
        match variant {
            Variant::Ours => self.ours(run).await,
            Variant::OursCoop(subs) => self.ours_coop(run, subs).await,
            Variant::Python => self.python(run).await,
            Variant::PythonCoop(subs) => self.python_coop(run, subs).await,
            Variant::Raw => self.raw().await,
        }
    }

    /// Registers `name` at the tick before the backlog.
    async fn register(&self, name: &str) -> Result<()> {
        self.client
            .execute(REGISTER_AT, &[&QUEUE, &name, &self.start_tick])
            .await
            .with_context(|| format!("registering {name}"))?;
        Ok(())
    }

    /// Registers group `name` at the tick before the backlog, with sub-consumers `s1`..`sN`.
    async fn register_group(&self, name: &str, subs: u32) -> Result<Vec<String>> {
        self.register(name).await?;
        let mut names = Vec::new();
        for i in 1..=subs {
            let sub = format!("s{i}");
            self.client
                .execute(REGISTER_SUB, &[&QUEUE, &name, &sub])
                .await
                .with_context(|| format!("registering {name}.{sub}"))?;
            names.push(sub);
        }
        Ok(names)
    }

    async fn ours(&self, run: u32) -> Result<Drained> {
        let name = format!("ours_r{run}");
        self.register(&name).await?;
        let tally = Arc::new(Tally::default());
        let config = ConsumerConfig::builder(self.queue.clone(), ConsumerName::new(&name)?).build();
        let mut runner = Runner::connect(self.dsn, config, tally.clone()).await?;
        let started = Instant::now();
        while runner.process_next_batch().await?.is_some() {}
        let seconds = started.elapsed().as_secs_f64();
        Ok(Drained {
            events: tally.events.load(Ordering::Relaxed),
            bytes: tally.bytes.load(Ordering::Relaxed),
            seconds,
            python_rss_kb: None,
        })
    }

    async fn ours_coop(&self, run: u32, subs: u32) -> Result<Drained> {
        let group = format!("ours_coop{subs}_r{run}");
        let names = self.register_group(&group, subs).await?;
        let tally = Arc::new(Tally::default());
        let config =
            ConsumerConfig::builder(self.queue.clone(), ConsumerName::new(&group)?).build();
        let mut runners = Vec::new();
        for sub in names {
            runners.push(
                CoopRunner::connect(
                    self.dsn,
                    config.clone(),
                    ConsumerName::new(sub)?,
                    None,
                    tally.clone(),
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
        let seconds = started.elapsed().as_secs_f64();
        Ok(Drained {
            events: tally.events.load(Ordering::Relaxed),
            bytes: tally.bytes.load(Ordering::Relaxed),
            seconds,
            python_rss_kb: None,
        })
    }

    async fn python(&self, run: u32) -> Result<Drained> {
        let name = format!("py_r{run}");
        self.register(&name).await?;
        let config = self.scratch.config(&name, self.dsn, &name, None)?;
        let worker = PythonWorker::start("plain", &config, self.dsn).await?;
        PythonWorker::go_all(vec![worker]).await
    }

    async fn python_coop(&self, run: u32, subs: u32) -> Result<Drained> {
        let group = format!("py_coop{subs}_r{run}");
        let names = self.register_group(&group, subs).await?;
        let mut workers = Vec::new();
        for sub in names {
            let config =
                self.scratch
                    .config(&format!("{group}_{sub}"), self.dsn, &group, Some(&sub))?;
            workers.push(PythonWorker::start("coop", &config, self.dsn).await?);
        }
        PythonWorker::go_all(workers).await
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

/// What a Python worker printed at the end.
#[derive(Debug, Deserialize)]
struct PythonDone {
    events: u64,
    bytes: u64,
    start: f64,
    end: f64,
    peak_rss_kb: Option<u64>,
}

/// One `python/e2e_consumer.py` process, connected and waiting for its go.
struct PythonWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl PythonWorker {
    /// Starts a worker and waits until it says `ready`.
    async fn start(kind: &str, config: &Path, dsn: &Dsn) -> Result<PythonWorker> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/e2e_consumer.py");
        let mut command = Command::new(PYTHON);
        command
            .arg(&script)
            .arg(kind)
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(password) = dsn.config().get_password() {
            command.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {PYTHON} {}", script.display()))?;
        let stdin = child.stdin.take().context("the worker's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the worker's stdout")?);
        let mut worker = PythonWorker {
            child,
            stdin,
            stdout,
        };
        tokio::task::spawn_blocking(move || {
            let line = worker.line();
            match line {
                Ok(line) if line.trim() == "ready" => Ok(worker),
                other => {
                    let _ = worker.child.kill();
                    let _ = worker.child.wait();
                    bail!("the python worker did not get ready: {other:?}")
                }
            }
        })
        .await?
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        ensure!(!line.is_empty(), "the python worker exited early");
        Ok(line)
    }

    /// Lets every worker go at once, and sums what they did, timed from the first start to
    /// the last end.
    async fn go_all(mut workers: Vec<PythonWorker>) -> Result<Drained> {
        for worker in &mut workers {
            writeln!(worker.stdin, "go")?;
            worker.stdin.flush()?;
        }
        tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            for mut worker in workers {
                let line = worker.line()?;
                let status = worker.child.wait()?;
                ensure!(status.success(), "python worker: {status}");
                done.push(serde_json::from_str::<PythonDone>(&line)?);
            }
            let start = done.iter().map(|d| d.start).fold(f64::INFINITY, f64::min);
            let end = done.iter().map(|d| d.end).fold(f64::NEG_INFINITY, f64::max);
            Ok(Drained {
                events: done.iter().map(|d| d.events).sum(),
                bytes: done.iter().map(|d| d.bytes).sum(),
                seconds: end - start,
                python_rss_kb: done.iter().filter_map(|d| d.peak_rss_kb).max(),
            })
        })
        .await?
    }
}

/// A directory for the Python workers' skytools configs and logs, removed at the end.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("pgq-bench-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir })
    }

    /// Writes `<name>.ini` for a worker of `consumer` (sub-consumer `sub` of that group).
    fn config(&self, name: &str, dsn: &Dsn, consumer: &str, sub: Option<&str>) -> Result<PathBuf> {
        let mut text = format!(
            "[e2e_consumer]\njob_name = {name}\nlogfile = {}\npidfile = {}\ndb = {}\n\
             queue_name = {QUEUE}\nconsumer_name = {consumer}\n",
            self.dir.join(format!("{name}.log")).display(),
            self.dir.join(format!("{name}.pid")).display(),
            connstr(dsn),
        );
        if let Some(sub) = sub {
            text.push_str(&format!("subconsumer_name = {sub}\n"));
        }
        let path = self.dir.join(format!("{name}.ini"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn remove(&self) {
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %err, "could not remove the scratch directory");
        }
    }
}
