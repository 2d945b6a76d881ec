//! Scenario `ticker`: what ticking costs, ours against the original extension and `pgqd`.
//!
//! 1. *Pass*: the server time of one `pgq.ticker()` pass over 1,000 queues (20 with `--quick`
//!    or `--reps`), when every queue ticks (one new event each, `ticker_max_count` = 1) and when
//!    none does (no new event), from `pg_stat_xact_user_functions` under
//!    `track_functions = 'pl'` (both sides' `pgq.ticker()` is PL/pgSQL), plus the statement's
//!    wall time.
//! 2. *Idle daemon*: the CPU of the real `pgq-ticker run` binary on our schema and of `pgqd` on
//!    the extension, each serving a database of 100 idle queues at a 1 s ticker period: the
//!    process and its backends, from `/proc/<pid>/stat`, as % of one core.
//! 3. *10 ms*: `pgq-ticker` with a 10 ms ticker period on a queue with a 10 ms `ticker_max_lag`:
//!    the idle CPU, and the time from a producer's commit to the `pgq_tick` notification for
//!    the tick holding its event.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use pgq_core::maintenance::TICK_CHANNEL;
use pgq_core::Dsn;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use crate::cli::Plan;
use crate::harness::{
    median_of_sorted, percentile, reference, Bench, Cpu, CpuClock, Daemon, Part, Server, Side,
    WorkDir,
};
use crate::report::{thousands, Limit, Measure, Measures, Ratio, Report};

/// Queues in the pass databases.
const PASS_QUEUES: usize = 1000;
/// Queues in the pass databases with `--quick` or `--reps`.
const PASS_QUEUES_SMALL: usize = 20;
/// Passes per sample without `--reps`.
const PASS_REPS: u32 = 5;
/// Queues in the idle-daemon databases.
const IDLE_QUEUES: usize = 100;
/// Queues in the idle-daemon databases with `--quick` or `--reps`.
const IDLE_QUEUES_SMALL: usize = 10;
/// Queues created per transaction (each takes locks; `max_locks_per_transaction` caps a
/// transaction at a few hundred queues).
const CREATE_BATCH: usize = 50;
/// How long CPU is measured.
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// How long CPU is measured with `--quick` or `--reps`.
const CPU_WINDOW_SMALL: Duration = Duration::from_secs(3);
/// How long a daemon runs before its CPU is measured (connection, first maintenance).
const SETTLE: Duration = Duration::from_secs(2);
/// [`SETTLE`] with `--quick` or `--reps`.
const SETTLE_SMALL: Duration = Duration::from_secs(1);
/// Commit-to-tick samples per run.
const LATENCY_SAMPLES: usize = 200;
/// Commit-to-tick samples per run with `--quick` or `--reps`.
const LATENCY_SAMPLES_SMALL: usize = 20;
/// The longest wait for one tick notification.
const LATENCY_TIMEOUT: Duration = Duration::from_secs(5);
/// The daemons' default ticker period.
const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// The fast setting: ticker period and the latency queue's `ticker_max_lag`.
const FAST_PERIOD_MS: u64 = 10;
/// The latency queue's `ticker_idle_period`: it bounds the wait of an event whose commit the
/// ticker's snapshot missed (PGQ's next idle tick comes at twice the previous tick gap, at most
/// after the idle period, 1 minute by default).
const LATENCY_IDLE_PERIOD: &str = "1 s";

// language=SQL
const CREATE_QUEUES: &str = "SELECT count(pgq.create_queue(q)) FROM unnest($1::text[]) AS q";
// language=SQL
const MAX_COUNT_ONE: &str = "SELECT count(pgq.set_queue_config(q, 'ticker_max_count', '1')) \
     FROM unnest($1::text[]) AS q";
// language=SQL
const EVENT_PER_QUEUE: &str = "SELECT count(pgq.insert_event(queue_name, 't', 'x')) FROM pgq.queue";
// language=SQL
const BEGIN_TRACKED: &str = "BEGIN; SET LOCAL track_functions = 'pl'";
// language=SQL
const TICKER_PASS: &str = "SELECT pgq.ticker()";
/// Times of `pgq.ticker()` not yet flushed to the statistics system, in milliseconds.
// language=SQL
const PASS_TIME: &str = "SELECT total_time, self_time FROM pg_catalog.pg_stat_xact_user_functions \
     WHERE funcid = 'pgq.ticker()'::pg_catalog.regprocedure";
// language=SQL
const COMMIT: &str = "COMMIT";
// language=SQL
const FAST_QUEUE_CONFIG: &str = "SELECT pgq.set_queue_config($1, 'ticker_max_lag', $2), \
     pgq.set_queue_config($1, 'ticker_idle_period', $3)";
/// Inserts one event and says in which transaction.
// language=SQL
const PRODUCE: &str = "SELECT pgq.insert_event($1, 't', 'x'), txid_current()";
/// Whether the queue's newest tick holds the transaction.
// language=SQL
const TICKED: &str = "SELECT coalesce(txid_visible_in_snapshot($2, t.tick_snapshot), false) \
       FROM pgq.tick t JOIN pgq.queue q ON q.queue_id = t.tick_queue \
      WHERE q.queue_name = $1 ORDER BY t.tick_queue DESC, t.tick_id DESC LIMIT 1";

const OURS: &str = "ours";
const REFERENCE: &str = "reference";
const OURS_DAEMON: &str = "ours (pgq-ticker)";
const REFERENCE_DAEMON: &str = "reference (pgqd)";
const PROCESS_PCT: &str = "process % of a core";
const BACKENDS_PCT: &str = "backends % of a core";
const TOTAL_PCT: &str = "process + backends % of a core";

/// The sizes of this run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    pass_queues: usize,
    pass_reps: u32,
    idle_queues: usize,
    window: Duration,
    settle: Duration,
    latency_samples: usize,
}

impl Sizes {
    fn new(plan: Plan) -> Sizes {
        if plan.small {
            Sizes {
                pass_queues: PASS_QUEUES_SMALL,
                pass_reps: plan.reps.unwrap_or(1),
                idle_queues: IDLE_QUEUES_SMALL,
                window: CPU_WINDOW_SMALL,
                settle: SETTLE_SMALL,
                latency_samples: LATENCY_SAMPLES_SMALL,
            }
        } else {
            Sizes {
                pass_queues: PASS_QUEUES,
                pass_reps: plan.reps.unwrap_or(PASS_REPS),
                idle_queues: IDLE_QUEUES,
                window: CPU_WINDOW,
                settle: SETTLE,
                latency_samples: LATENCY_SAMPLES,
            }
        }
    }

    /// What a pass measure is called.
    fn pass_what(self, case: Case) -> String {
        format!(
            "ticker pass, {} queues, {}",
            thousands(self.pass_queues as f64),
            case.label()
        )
    }
}

/// How the figures are made.
fn method(sizes: Sizes, runs: u32) -> Vec<String> {
    let n_pass = thousands(sizes.pass_queues as f64);
    let n_idle = thousands(sizes.idle_queues as f64);
    let window = sizes.window.as_secs();
    vec![
        format!(
            "{runs} run(s); within a run the variants alternate in the order listed; each \
             figure's min/median/max are over the runs."
        ),
        format!(
            "Pass: one `SELECT pgq.ticker()` over {n_pass} queues (`ticker_max_count` = 1), in \
             a transaction with `SET LOCAL track_functions = 'pl'`; server times from \
             `pg_stat_xact_user_functions` read before and after it in that transaction (total: \
             with the per-queue calls; self: the loop alone), wall: the statement seen by the client; each sample is the mean of {} \
             pass(es). *all tick*: one event per queue inserted (untimed) before the pass; \
             *none ticks*: no event since the previous pass. Ours includes the \
             trigger that announces each tick on `{TICK_CHANNEL}`.",
            sizes.pass_reps
        ),
        format!(
            "Idle daemon: a database of {n_idle} queues without events; the daemon runs {} s, \
             then its CPU and that of its backends (the client backends connected to the \
             database; one that goes away during the window counts until the start, one that \
             comes counts whole) is measured over {window} s, as % of one core: on-CPU time from \
             /proc/<pid>/task/*/schedstat (ns), where missing utime + stime from \
             /proc/<pid>/stat (clock ticks). Ours is the `pgq-ticker run` \
             binary on our schema; the reference is `pgqd` on the extension; both at their \
             default 1 s ticker period.",
            sizes.settle.as_secs()
        ),
        format!(
            "10 ms: `pgq-ticker run` with `ticker_period = \"{FAST_PERIOD_MS}ms\"` on the idle \
             database, one queue with `ticker_max_lag` = '{FAST_PERIOD_MS} ms' and \
             `ticker_idle_period` = '{LATENCY_IDLE_PERIOD}'; idle CPU as above (and pgqd's with \
             `ticker_period = 0.01` on the extension, for comparison), then {} times: commit \
             one event (autocommit), wait for the `{TICK_CHANNEL}` notification after which the \
             queue's newest tick holds the event's transaction; p50/p99 per run. A random \
             0-10 ms pause separates the samples. When the first tick after the commit does not \
             hold the transaction yet (the ticker took its snapshot while the commit was under \
             way), PGQ's tick rule sees no new event, and the event waits for the next idle \
             tick: twice the previous tick gap, at most the idle period. That is the tail.",
            sizes.latency_samples
        ),
    ]
}

/// Runs the scenario on scratch databases of the bench's server.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let sizes = Sizes::new(bench.plan);
    let mut notes = method(sizes, bench.plan.runs);
    let mut setup = Setup::new(bench, sizes, &mut notes).await?;
    let work_dir = WorkDir::new("ticker")?;
    let (measures, backends_seen) = measure(&mut setup, bench.plan, &work_dir).await?;
    if !backends_seen {
        notes.push(
            "**The backends' CPU was not measured: their processes are not visible in /proc \
             (the server runs on another machine or in another PID namespace).**"
                .to_owned(),
        );
    }
    Ok(report(notes, sizes, measures))
}

/// The databases and connections every run uses.
struct Setup {
    sizes: Sizes,
    ticker_bin: std::path::PathBuf,
    /// Ours, then the reference's when it is installed.
    pass_dbs: Vec<PassDb>,
    idle_ours: Dsn,
    /// The reference's idle database, when the extension and pgqd are installed.
    idle_reference: Option<Dsn>,
    latency_queue: String,
    /// A connection to the maintenance database, which lists a daemon's backends.
    watch: Client,
    clock: CpuClock,
}

impl Setup {
    async fn new(bench: &Bench<'_>, sizes: Sizes, notes: &mut Vec<String>) -> Result<Setup> {
        let server = bench.server;
        let ticker_bin = bench.ticker_binary()?;
        let with_reference = reference(
            server,
            &[Part::Extension],
            "its variants are skipped",
            notes,
        )
        .await?;
        let with_pgqd = with_reference
            && reference(
                server,
                &[Part::Pgqd],
                "the reference daemon is skipped",
                notes,
            )
            .await?;
        let mut pass_dbs = vec![PassDb::setup(server, Side::Ours, sizes.pass_queues).await?];
        if with_reference {
            pass_dbs.push(PassDb::setup(server, Side::Reference, sizes.pass_queues).await?);
        }
        let idle_ours = idle_db(server, Side::Ours, sizes.idle_queues).await?;
        let idle_reference = if with_pgqd {
            Some(idle_db(server, Side::Reference, sizes.idle_queues).await?)
        } else {
            None
        };
        let latency_queue = queue_name(0);
        let max_lag = format!("{FAST_PERIOD_MS} ms");
        idle_ours
            .connect()
            .await?
            .query_one(
                FAST_QUEUE_CONFIG,
                &[&latency_queue, &max_lag, &LATENCY_IDLE_PERIOD],
            )
            .await
            .context("configuring the latency queue")?;
        let watch = server
            .maintenance()
            .connect()
            .await
            .context("connecting to the maintenance database")?;
        Ok(Setup {
            sizes,
            ticker_bin,
            pass_dbs,
            idle_ours,
            idle_reference,
            latency_queue,
            watch,
            clock: CpuClock::new().await,
        })
    }

    /// Measures the idle CPU of a daemon that was just started, then stops it.
    async fn idle_cpu(&self, mut daemon: Daemon) -> Result<Cpu> {
        let cpu = daemon
            .idle_cpu(
                &self.watch,
                &self.clock,
                self.sizes.settle,
                self.sizes.window,
            )
            .await;
        daemon.stop(&self.watch).await?;
        cpu
    }
}

/// Every run: the passes, the idle daemons at 1 s, then at 10 ms with the commit-to-tick
/// latencies. Also says whether the backends' CPU was seen in every run.
async fn measure(setup: &mut Setup, plan: Plan, work_dir: &WorkDir) -> Result<(Measures, bool)> {
    let sizes = setup.sizes;
    for db in &mut setup.pass_dbs {
        db.pass(Case::All).await?;
        db.pass(Case::None).await?;
    }
    let n_idle = thousands(sizes.idle_queues as f64);
    let idle_what = format!("idle daemon, {n_idle} queues, period 1 s");
    let fast_what = format!("idle daemon, {n_idle} queues, period {FAST_PERIOD_MS} ms");
    let lat_what = format!("commit → tick notification, period {FAST_PERIOD_MS} ms");
    let fast_period = Duration::from_millis(FAST_PERIOD_MS);
    let dir = work_dir.path();
    let mut m = Measures::default();
    let mut backends_seen = true;
    let mut push_cpu = |m: &mut Measures, what: &str, variant: &'static str, cpu: Cpu| {
        backends_seen &= cpu.backends_pct.is_some();
        m.push(what, variant, PROCESS_PCT, cpu.process_pct);
        if let Some(backends) = cpu.backends_pct {
            m.push(what, variant, BACKENDS_PCT, backends);
            m.push(what, variant, TOTAL_PCT, cpu.process_pct + backends);
        }
    };
    let mut rng = Lcg::new(u64::from(std::process::id()));
    for run in 1..=plan.runs {
        for case in [Case::All, Case::None] {
            for db in &mut setup.pass_dbs {
                let mut sum = PassTime::default();
                for _ in 0..sizes.pass_reps {
                    sum = sum.plus(db.pass(case).await?);
                }
                let mean = sum.over(sizes.pass_reps);
                let variant = db.side.pick(OURS, REFERENCE);
                tracing::info!(
                    run,
                    variant,
                    case = case.label(),
                    total_ms = mean.total_ms,
                    "ticker pass"
                );
                let what = sizes.pass_what(case);
                m.push(&what, variant, "server total ms", mean.total_ms);
                m.push(&what, variant, "server self ms", mean.self_ms);
                m.push(&what, variant, "wall ms", mean.wall_ms);
            }
        }

        let setup = &*setup;
        let daemon = Daemon::ours(&setup.ticker_bin, &setup.idle_ours, DEFAULT_PERIOD, dir).await?;
        push_cpu(
            &mut m,
            &idle_what,
            OURS_DAEMON,
            setup.idle_cpu(daemon).await?,
        );
        if let Some(db) = &setup.idle_reference {
            let daemon = Daemon::pgqd(db, DEFAULT_PERIOD, dir).await?;
            push_cpu(
                &mut m,
                &idle_what,
                REFERENCE_DAEMON,
                setup.idle_cpu(daemon).await?,
            );
        }

        let mut daemon =
            Daemon::ours(&setup.ticker_bin, &setup.idle_ours, fast_period, dir).await?;
        let measured = async {
            let cpu = daemon
                .idle_cpu(&setup.watch, &setup.clock, sizes.settle, sizes.window)
                .await?;
            let latencies = commit_to_tick(
                &setup.idle_ours,
                &setup.latency_queue,
                sizes.latency_samples,
                &mut rng,
            )
            .await?;
            anyhow::Ok((cpu, latencies))
        }
        .await;
        daemon.stop(&setup.watch).await?;
        let (cpu, latencies) = measured?;
        push_cpu(&mut m, &fast_what, OURS_DAEMON, cpu);
        if let Some(db) = &setup.idle_reference {
            let daemon = Daemon::pgqd(db, fast_period, dir).await?;
            push_cpu(
                &mut m,
                &fast_what,
                REFERENCE_DAEMON,
                setup.idle_cpu(daemon).await?,
            );
        }
        let Latencies {
            ms: mut latencies,
            missed,
        } = latencies;
        latencies.sort_by(f64::total_cmp);
        let p50 = median_of_sorted(&latencies);
        let p99 = percentile(&latencies, 99);
        tracing::info!(run, p50_ms = p50, p99_ms = p99, "commit to tick");
        m.push(&lat_what, OURS_DAEMON, "p50 ms", p50);
        m.push(&lat_what, OURS_DAEMON, "p99 ms", p99);
        m.push(
            &lat_what,
            OURS_DAEMON,
            "samples whose first tick missed the commit",
            missed as f64,
        );
    }
    Ok((m, backends_seen))
}

/// The report: the measures, the pass ratios of medians, and the daemon's limits.
fn report(notes: Vec<String>, sizes: Sizes, measures: Measures) -> Report {
    let measures = measures.into_vec();
    let find = |what: &str, variant: &str, metric: &str| {
        measures
            .iter()
            .find(|x| x.what.starts_with(what) && x.variant == variant && x.metric == metric)
    };
    let mut ratios = Vec::new();
    for case in [Case::All, Case::None] {
        let what = sizes.pass_what(case);
        for metric in ["server total ms", "wall ms"] {
            ratios.push(Ratio::of_values(
                format!("{REFERENCE} / {OURS}, {what}, {metric}"),
                find(&what, REFERENCE, metric).map(Measure::median),
                find(&what, OURS, metric).map(Measure::median),
                None,
            ));
        }
    }
    let limits = vec![
        Limit::of(
            format!("{OURS_DAEMON} idle CPU, process + backends, period 1 s (% of one core)"),
            find("idle daemon", OURS_DAEMON, TOTAL_PCT),
            1.0,
        ),
        Limit::of(
            format!("commit → tick notification p50, period {FAST_PERIOD_MS} ms (ms)"),
            find("commit → tick", OURS_DAEMON, "p50 ms"),
            20.0,
        ),
    ];
    Report {
        scenario: "ticker",
        notes,
        series: Vec::new(),
        ratios,
        measures,
        limits,
    }
}

/// Whether a pass finds work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// Every queue has a new event and ticks.
    All,
    /// No queue has a new event; none ticks.
    None,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::All => "all tick",
            Case::None => "none ticks",
        }
    }
}

/// The name of the `i`th queue.
fn queue_name(i: usize) -> String {
    format!("q{i:04}")
}

/// A scratch database `<role>_<side>` with `queues` queues, created [`CREATE_BATCH`] to a
/// transaction; returns its connection settings.
async fn queues_db(server: &Server, role: &str, side: Side, queues: usize) -> Result<Dsn> {
    let (dsn, mut client) = side.database(server, role).await?;
    let started = Instant::now();
    let names: Vec<String> = (0..queues).map(queue_name).collect();
    for chunk in names.chunks(CREATE_BATCH) {
        let chunk = chunk.to_vec();
        let tx = client.transaction().await?;
        let created: i64 = tx
            .query_one(CREATE_QUEUES, &[&chunk])
            .await
            .with_context(|| format!("creating queues in {} ({side:?})", dsn.dbname()))?
            .get(0);
        ensure!(
            usize::try_from(created).ok() == Some(chunk.len()),
            "created {created} queues, not {}",
            chunk.len()
        );
        tx.commit().await?;
    }
    tracing::info!(
        db = dsn.dbname(),
        queues,
        seconds = started.elapsed().as_secs_f64(),
        "queues created"
    );
    Ok(dsn)
}

/// An idle-daemon database of `side` with `queues` queues.
async fn idle_db(server: &Server, side: Side, queues: usize) -> Result<Dsn> {
    queues_db(server, "ticker_idle", side, queues).await
}

/// A database whose `pgq.ticker()` passes are timed.
struct PassDb {
    side: Side,
    client: Client,
    queues: i64,
}

/// The times of one pass (or their sum, or their mean), in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct PassTime {
    total_ms: f64,
    self_ms: f64,
    wall_ms: f64,
}

impl PassTime {
    fn plus(self, other: PassTime) -> PassTime {
        PassTime {
            total_ms: self.total_ms + other.total_ms,
            self_ms: self.self_ms + other.self_ms,
            wall_ms: self.wall_ms + other.wall_ms,
        }
    }

    fn over(self, n: u32) -> PassTime {
        let n = f64::from(n.max(1));
        PassTime {
            total_ms: self.total_ms / n,
            self_ms: self.self_ms / n,
            wall_ms: self.wall_ms / n,
        }
    }
}

impl PassDb {
    /// A scratch database of `side` with `queues` queues that tick on one event.
    async fn setup(server: &Server, side: Side, queues: usize) -> Result<PassDb> {
        let dsn = queues_db(server, "ticker_pass", side, queues).await?;
        let client = dsn.connect().await?;
        let names: Vec<String> = (0..queues).map(queue_name).collect();
        for chunk in names.chunks(CREATE_BATCH) {
            let chunk = chunk.to_vec();
            client
                .query_one(MAX_COUNT_ONE, &[&chunk])
                .await
                .context("setting ticker_max_count")?;
        }
        Ok(PassDb {
            side,
            client,
            queues: i64::try_from(queues)?,
        })
    }

    /// One tracked pass; checks that it ticked every queue or none.
    async fn pass(&mut self, case: Case) -> Result<PassTime> {
        let label = self.side.pick(OURS, REFERENCE);
        if case == Case::All {
            let inserted: i64 = self
                .client
                .query_one(EVENT_PER_QUEUE, &[])
                .await
                .with_context(|| format!("inserting an event per queue ({label})"))?
                .get(0);
            ensure!(
                inserted == self.queues,
                "{label}: {inserted} events for {} queues",
                self.queues
            );
        }
        self.client.batch_execute(BEGIN_TRACKED).await?;
        let before = self.pass_time().await?;
        let start = Instant::now();
        let messages = self
            .client
            .simple_query(TICKER_PASS)
            .await
            .with_context(|| format!("pgq.ticker() ({label})"))?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let ticked: i64 = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .with_context(|| format!("pgq.ticker() ({label}) returned no count"))?;
        let after = self.pass_time().await?;
        self.client.batch_execute(COMMIT).await?;
        ensure!(
            after.0 > before.0,
            "pgq.ticker() ({label}) not counted in pg_stat_xact_user_functions"
        );
        let expected = match case {
            Case::All => self.queues,
            Case::None => 0,
        };
        ensure!(
            ticked == expected,
            "{label}: pgq.ticker() ticked {ticked} queues, not {expected} ({})",
            case.label()
        );
        Ok(PassTime {
            total_ms: after.0 - before.0,
            self_ms: after.1 - before.1,
            wall_ms,
        })
    }

    /// `pgq.ticker()`'s total and self time (ms) not yet flushed to the statistics system: the
    /// current transaction's and that of earlier ones of this session (PostgreSQL 15 keeps
    /// them pending until the session is idle for a while, and never inside a transaction).
    async fn pass_time(&self) -> Result<(f64, f64)> {
        let row = self.client.query_opt(PASS_TIME, &[]).await?;
        Ok(row.map_or((0.0, 0.0), |r| (r.get(0), r.get(1))))
    }
}

/// Commit-to-tick latencies on a database a daemon ticks.
struct Latencies {
    /// One per sample, in milliseconds.
    ms: Vec<f64>,
    /// Samples whose first tick after the commit did not hold the transaction yet: the ticker
    /// took its snapshot while the commit was under way, and PGQ's tick rule (new events
    /// counted from the event sequence) then waits for the next idle tick.
    missed: usize,
}

/// `samples` commit-to-tick latencies on a database a daemon ticks.
async fn commit_to_tick(db: &Dsn, queue: &str, samples: usize, rng: &mut Lcg) -> Result<Latencies> {
    let (listener, mut connection) = db
        .config()
        .connect(NoTls)
        .await
        .context("connecting the listener")?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wanted = queue.to_owned();
    let forward = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n))
                    if n.channel() == TICK_CHANNEL && n.payload() == wanted =>
                {
                    if tx.send(Instant::now()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "listener connection failed");
                    break;
                }
            }
        }
    });
    pgq_core::maintenance::listen_ticks(&listener).await?;
    let producer = db.connect().await?;
    let produce = producer.prepare(PRODUCE).await?;
    let ticked = producer.prepare(TICKED).await?;

    let mut latencies = Latencies {
        ms: Vec::with_capacity(samples),
        missed: 0,
    };
    let result = async {
        for _ in 0..samples {
            while rx.try_recv().is_ok() {}
            let row = producer.query_one(&produce, &[&queue]).await?;
            let committed = Instant::now();
            let txid: i64 = row.get(1);
            let deadline = committed + LATENCY_TIMEOUT;
            let mut first = true;
            loop {
                let at = tokio::time::timeout_at(deadline.into(), rx.recv())
                    .await
                    .with_context(|| {
                        format!("no tick of {queue} within {LATENCY_TIMEOUT:?} of a commit")
                    })?
                    .context("the listener connection ended")?;
                let holds: bool = producer.query_one(&ticked, &[&queue, &txid]).await?.get(0);
                if holds {
                    let ms = at.saturating_duration_since(committed).as_secs_f64() * 1e3;
                    latencies.ms.push(ms);
                    break;
                }
                if first {
                    latencies.missed += 1;
                    first = false;
                }
            }
            let pause = rng.below(FAST_PERIOD_MS * 1000);
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
        anyhow::Ok(())
    }
    .await;
    drop(listener);
    forward.abort();
    result?;
    Ok(latencies)
}

/// A tiny linear congruential generator for the pauses between latency samples.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Lcg {
        Lcg(seed | 1)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_below_the_bound() {
        let mut rng = Lcg::new(7);
        assert!((0..1000).all(|_| rng.below(10) < 10));
    }
}
