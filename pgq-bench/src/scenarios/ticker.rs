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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use pgq_core::{Dsn, Line};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use crate::cli::Plan;
use crate::reference::extension_available;
use crate::report::{median_of_sorted, Limit, Measure, Ratio, Report};
use crate::server::Server;

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
/// The longest wait for a daemon to connect, or for its backends to go after it stopped.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(15);
/// The fast setting: ticker period and the latency queue's `ticker_max_lag`.
const FAST_PERIOD_MS: u64 = 10;
/// The latency queue's `ticker_idle_period`: it bounds the wait of an event whose commit the
/// ticker's snapshot missed (PGQ's next idle tick comes at twice the previous tick gap, at most
/// after the idle period, 1 minute by default).
const LATENCY_IDLE_PERIOD: &str = "1 s";
/// The channel ticks are announced on.
const TICK_CHANNEL: &str = "pgq_tick";
/// The original ticker daemon.
const PGQD: &str = "/usr/bin/pgqd";
/// Our daemon's binary name.
const TICKER_BIN: &str = "pgq-ticker";

// language=SQL
const CREATE_REFERENCE: &str = "CREATE EXTENSION pgq";
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
/// The client backends connected to a database.
// language=SQL
const BACKENDS: &str = "SELECT pid FROM pg_catalog.pg_stat_activity \
     WHERE datname = $1 AND backend_type = 'client backend' ORDER BY pid";
// language=SQL
const FAST_QUEUE_CONFIG: &str = "SELECT pgq.set_queue_config($1, 'ticker_max_lag', $2), \
     pgq.set_queue_config($1, 'ticker_idle_period', $3)";
// language=SQL
const LISTEN: &str = "LISTEN pgq_tick";
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

/// Runs the scenario on scratch databases of `server`.
pub(crate) async fn run(server: &Server, plan: Plan) -> Result<Report> {
    let sizes = Sizes::new(plan);
    let work_dir = std::env::temp_dir().join(format!("pgq-bench-ticker-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let result = run_in(server, plan, sizes, &work_dir).await;
    if let Err(err) = std::fs::remove_dir_all(&work_dir) {
        tracing::warn!(%err, dir = %work_dir.display(), "cannot remove the work directory");
    }
    result
}

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
}

async fn run_in(server: &Server, plan: Plan, sizes: Sizes, work_dir: &Path) -> Result<Report> {
    let n_pass = thousands(sizes.pass_queues);
    let n_idle = thousands(sizes.idle_queues);
    let window = sizes.window.as_secs();
    let mut notes = vec![
        format!(
            "{} run(s); within a run the variants alternate in the order listed; each figure's \
             min/median/max are over the runs.",
            plan.runs
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
             /proc/<pid>/stat (clock ticks). Ours is the `{TICKER_BIN} run` \
             binary on our schema; the reference is `pgqd` on the extension; both at their \
             default 1 s ticker period.",
            sizes.settle.as_secs()
        ),
        format!(
            "10 ms: `{TICKER_BIN} run` with `ticker_period = \"{FAST_PERIOD_MS}ms\"` on the idle \
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
    ];

    let ticker_bin = ticker_binary().await?;
    let reference = extension_available(server).await?;
    if !reference {
        let note = "REFERENCE MISSING: the original pgq extension is not available on this \
                    server (install postgresql-15-pgq3); its variants are skipped.";
        eprintln!("\n*** {note} ***\n");
        notes.push(format!("**{note}**"));
    }
    let pgqd = Path::new(PGQD).is_file();
    if reference && !pgqd {
        let note = "REFERENCE MISSING: /usr/bin/pgqd not found (install pgqd); the reference \
                    daemon is skipped.";
        eprintln!("\n*** {note} ***\n");
        notes.push(format!("**{note}**"));
    }

    let mut pass_dbs = vec![PassDb::setup(server, Side::Ours, sizes.pass_queues).await?];
    if reference {
        pass_dbs.push(PassDb::setup(server, Side::Reference, sizes.pass_queues).await?);
    }
    let idle_ours = idle_db(server, Side::Ours, sizes.idle_queues).await?;
    let idle_reference = if reference && pgqd {
        Some(idle_db(server, Side::Reference, sizes.idle_queues).await?)
    } else {
        None
    };
    let latency_queue = queue_name(0);
    {
        let client = idle_ours.connect().await?;
        let max_lag = format!("{FAST_PERIOD_MS} ms");
        client
            .query_one(
                FAST_QUEUE_CONFIG,
                &[&latency_queue, &max_lag, &LATENCY_IDLE_PERIOD],
            )
            .await
            .context("configuring the latency queue")?;
    }
    let watch = server
        .maintenance()
        .connect()
        .await
        .context("connecting to the maintenance database")?;
    let clock_ticks = clock_ticks_per_second().await;

    for db in &mut pass_dbs {
        db.pass(Case::All).await?;
        db.pass(Case::None).await?;
    }

    let mut m = Measures::default();
    let mut backends_seen = true;
    let mut rng = Lcg::new(u64::from(std::process::id()));
    for run in 1..=plan.runs {
        for case in [Case::All, Case::None] {
            for db in &mut pass_dbs {
                let mut sum = PassTime::default();
                for _ in 0..sizes.pass_reps {
                    sum = sum.plus(db.pass(case).await?);
                }
                let mean = sum.over(sizes.pass_reps);
                tracing::info!(
                    run,
                    variant = db.side.label(),
                    case = case.label(),
                    total_ms = mean.total_ms,
                    "ticker pass"
                );
                let what = format!("ticker pass, {n_pass} queues, {}", case.label());
                m.push(&what, db.side.label(), "server total ms", mean.total_ms);
                m.push(&what, db.side.label(), "server self ms", mean.self_ms);
                m.push(&what, db.side.label(), "wall ms", mean.wall_ms);
            }
        }

        let idle_what = format!("idle daemon, {n_idle} queues, period 1 s");
        let mut daemon = Daemon::ours(&ticker_bin, &idle_ours, "1s", work_dir).await?;
        let cpu = daemon.cpu(&watch, sizes, clock_ticks).await;
        daemon.stop(&watch).await?;
        let cpu = cpu?;
        backends_seen &= cpu.backends_pct.is_some();
        m.push_cpu(&idle_what, OURS_DAEMON, cpu);

        if let Some(db) = &idle_reference {
            let cpu = pgqd_cpu(db, "1", &watch, sizes, clock_ticks, work_dir).await?;
            backends_seen &= cpu.backends_pct.is_some();
            m.push_cpu(&idle_what, REFERENCE_DAEMON, cpu);
        }

        let fast_what = format!("idle daemon, {n_idle} queues, period {FAST_PERIOD_MS} ms");
        let period = format!("{FAST_PERIOD_MS}ms");
        let mut daemon = Daemon::ours(&ticker_bin, &idle_ours, &period, work_dir).await?;
        let measured = async {
            let cpu = daemon.cpu(&watch, sizes, clock_ticks).await?;
            let latencies =
                commit_to_tick(&idle_ours, &latency_queue, sizes.latency_samples, &mut rng).await?;
            anyhow::Ok((cpu, latencies))
        }
        .await;
        daemon.stop(&watch).await?;
        let (cpu, latencies) = measured?;
        backends_seen &= cpu.backends_pct.is_some();
        m.push_cpu(&fast_what, OURS_DAEMON, cpu);
        if let Some(db) = &idle_reference {
            let cpu = pgqd_cpu(db, "0.01", &watch, sizes, clock_ticks, work_dir).await?;
            backends_seen &= cpu.backends_pct.is_some();
            m.push_cpu(&fast_what, REFERENCE_DAEMON, cpu);
        }
        let Latencies {
            ms: mut latencies,
            missed,
        } = latencies;
        latencies.sort_by(f64::total_cmp);
        let lat_what = format!("commit → tick notification, period {FAST_PERIOD_MS} ms");
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
    if !backends_seen {
        notes.push(
            "**The backends' CPU was not measured: their processes are not visible in /proc \
             (the server runs on another machine or in another PID namespace).**"
                .to_owned(),
        );
    }

    let measures = m.0;
    let find = |what: &str, variant: &str, metric: &str| {
        measures
            .iter()
            .find(|x| x.what.starts_with(what) && x.variant == variant && x.metric == metric)
    };
    let mut ratios = Vec::new();
    for case in [Case::All, Case::None] {
        let what = format!("ticker pass, {n_pass} queues, {}", case.label());
        for metric in ["server total ms", "wall ms"] {
            ratios.push(Ratio {
                label: format!("{REFERENCE} / {OURS}, {what}, {metric}"),
                value: find(&what, REFERENCE, metric)
                    .zip(find(&what, OURS, metric))
                    .map(|(r, o)| r.median() / o.median()),
                target: None,
                met: None,
            });
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
    Ok(Report {
        scenario: "ticker",
        notes,
        series: Vec::new(),
        ratios,
        measures,
        limits,
    })
}

const PROCESS_PCT: &str = "process % of a core";
const BACKENDS_PCT: &str = "backends % of a core";
const TOTAL_PCT: &str = "process + backends % of a core";

/// The measures collected so far, in first-measured order.
#[derive(Default)]
struct Measures(Vec<Measure>);

impl Measures {
    /// Appends `value` to the measure of `what`, `variant` and `metric`, creating it first.
    fn push(&mut self, what: &str, variant: &'static str, metric: &'static str, value: f64) {
        match self
            .0
            .iter_mut()
            .find(|m| m.what == what && m.variant == variant && m.metric == metric)
        {
            Some(m) => m.samples.push(value),
            None => self.0.push(Measure {
                what: what.to_owned(),
                variant,
                metric,
                samples: vec![value],
            }),
        }
    }

    /// Appends a daemon's CPU shares; without the backends' share only the process's.
    fn push_cpu(&mut self, what: &str, variant: &'static str, cpu: Cpu) {
        self.push(what, variant, PROCESS_PCT, cpu.process_pct);
        if let Some(backends) = cpu.backends_pct {
            self.push(what, variant, BACKENDS_PCT, backends);
            self.push(what, variant, TOTAL_PCT, cpu.process_pct + backends);
        }
    }
}

/// Which implementation a database has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Our schema, installed by `pgq_core::install`.
    Ours,
    /// The original `pgq` extension.
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

/// A scratch database of `side` with `queues` queues; returns its connection settings.
async fn create_db(server: &Server, role: &str, side: Side, queues: usize) -> Result<Dsn> {
    let dsn = server.scratch_db(role).await?;
    let mut client = dsn
        .connect()
        .await
        .with_context(|| format!("connecting to {}", dsn.dbname()))?;
    match side {
        Side::Ours => {
            pgq_core::install(&mut client, &[Line::Pgq])
                .await
                .context("installing our pgq schema")?;
        }
        Side::Reference => client
            .batch_execute(CREATE_REFERENCE)
            .await
            .context("creating the reference pgq extension")?,
    }
    let started = Instant::now();
    let names: Vec<String> = (0..queues).map(queue_name).collect();
    for chunk in names.chunks(CREATE_BATCH) {
        let chunk = chunk.to_vec();
        let tx = client.transaction().await?;
        let created: i64 = tx
            .query_one(CREATE_QUEUES, &[&chunk])
            .await
            .with_context(|| format!("creating queues in {} ({})", dsn.dbname(), side.label()))?
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
    let role = match side {
        Side::Ours => "ticker_idle_ours",
        Side::Reference => "ticker_idle_reference",
    };
    create_db(server, role, side, queues).await
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
        let role = match side {
            Side::Ours => "ticker_pass_ours",
            Side::Reference => "ticker_pass_reference",
        };
        let dsn = create_db(server, role, side, queues).await?;
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
        let label = self.side.label();
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

/// Our daemon's binary: built (or brought up to date) with cargo when this program runs from
/// the workspace, and found beside this program (or one directory up, for test binaries).
pub(crate) async fn ticker_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating pgq-bench's own binary")?;
    let dir = exe
        .parent()
        .context("pgq-bench's binary has no directory")?;
    let candidates = [dir.join(TICKER_BIN), dir.join("..").join(TICKER_BIN)];
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if workspace.join("Cargo.toml").is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(&workspace)
            .args(["build", "--quiet", "-p", TICKER_BIN, "--bin", TICKER_BIN]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        tracing::info!("building {TICKER_BIN}");
        let status = build
            .stdin(Stdio::null())
            .status()
            .await
            .context("running cargo build")?;
        if !status.success() {
            tracing::warn!(%status, "cargo build -p {TICKER_BIN} failed; using an existing binary");
        }
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no {TICKER_BIN} binary beside {}; build it with `cargo build --release -p \
                 {TICKER_BIN}`",
                exe.display()
            )
        })
}

/// `dsn` as a libpq keyword/value string without its password (given to a child process in
/// `PGPASSWORD` instead) and, when `without_dbname`, without its database name.
fn child_connstr(dsn: &Dsn, without_dbname: bool) -> String {
    dsn.to_string()
        .split(' ')
        .filter(|kv| {
            let dbname = without_dbname && kv.starts_with("dbname=");
            !(dbname || kv.starts_with("password="))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The password of `dsn`, for a child's `PGPASSWORD`.
fn password(dsn: &Dsn) -> Option<String> {
    dsn.config()
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// A running daemon serving one database.
pub(crate) struct Daemon {
    child: Child,
    name: &'static str,
    db: String,
    log: PathBuf,
}

/// A daemon's CPU shares over a window.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    process_pct: f64,
    /// `None` when the backends' processes are not visible here.
    backends_pct: Option<f64>,
}

impl Daemon {
    /// Starts `pgq-ticker run` on `db` with this ticker period.
    pub(crate) async fn ours(bin: &Path, db: &Dsn, period: &str, dir: &Path) -> Result<Daemon> {
        let config = dir.join(format!("ticker-{period}.toml"));
        let text = format!(
            "[ticker]\ndatabases = [{}]\nticker_period = {}\n",
            serde_json::to_string(&child_connstr(db, false))?,
            serde_json::to_string(period)?
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join(format!("ticker-{period}.log"));
        let mut command = Command::new(bin);
        command
            .arg("--log-level")
            .arg("warn")
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env_remove("PGQ_DSN");
        Daemon::spawn(command, TICKER_BIN, db, log).await
    }

    /// Starts `pgqd` on `db` with this ticker period (seconds).
    pub(crate) async fn pgqd(db: &Dsn, period: &str, dir: &Path) -> Result<Daemon> {
        let config = dir.join("pgqd.ini");
        let log = dir.join("pgqd.log");
        let text = format!(
            "[pgqd]\nlogfile = {}\npidfile = {}\nbase_connstr = {}\ninitial_database = {name}\n\
             database_list = {name}\nticker_period = {period}\n",
            log.display(),
            dir.join("pgqd.pid").display(),
            child_connstr(db, true),
            name = db.dbname(),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new(PGQD);
        command.arg(&config);
        Daemon::spawn(command, "pgqd", db, log).await
    }

    async fn spawn(
        mut command: Command,
        name: &'static str,
        db: &Dsn,
        log: PathBuf,
    ) -> Result<Daemon> {
        if let Some(password) = password(db) {
            command.env("PGPASSWORD", password);
        }
        let stderr = std::fs::File::create(log.with_extension("stderr"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon {
            child,
            name,
            db: db.dbname().to_owned(),
            log,
        })
    }

    /// What the daemon logged, for error messages.
    fn logged(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(&self.log).unwrap_or_default());
        text
    }

    /// Waits for the daemon's backends, lets it settle, then measures its CPU and theirs.
    async fn cpu(&mut self, watch: &Client, sizes: Sizes, clock_ticks: f64) -> Result<Cpu> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} exited at once:\n{}", self.name, self.logged()))?;
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, self.logged());
            }
            if !backend_pids(watch, &self.db).await?.is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not connect to {} in time:\n{}",
                self.name,
                self.db,
                self.logged()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(sizes.settle).await;
        let backends = backend_pids(watch, &self.db).await?;
        let process_before = cpu_seconds(pid, clock_ticks)?;
        let backends_before = backend_cpu(&backends, clock_ticks);
        let start = Instant::now();
        tokio::time::sleep(sizes.window).await;
        let process_after = cpu_seconds(pid, clock_ticks)?;
        let mut backends_after = backend_cpu(&backends, clock_ticks);
        let seconds = start.elapsed().as_secs_f64();
        let newer = backend_pids(watch, &self.db).await?;
        let newer: BTreeSet<i32> = newer.difference(&backends).copied().collect();
        backends_after.extend(backend_cpu(&newer, clock_ticks));
        // backends visible here at the start: the server runs on this machine
        let visible = backends.is_empty() || !backends_before.is_empty();
        let backends_cpu: f64 = backends_after
            .iter()
            .map(|(pid, after)| after - backends_before.get(pid).copied().unwrap_or(0.0))
            .sum();
        let pct = |cpu: f64| (cpu / seconds * 100.0).max(0.0);
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.logged());
        }
        let cpu = Cpu {
            process_pct: pct(process_after - process_before),
            backends_pct: visible.then(|| pct(backends_cpu)),
        };
        tracing::info!(
            daemon = self.name,
            process_pct = cpu.process_pct,
            backends_pct = cpu.backends_pct,
            "idle CPU"
        );
        Ok(cpu)
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after a while) and waits until its backends are
    /// gone, so that the next daemon gets the database's ticker lock at once.
    pub(crate) async fn stop(mut self, watch: &Client) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let term = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
            if !term.is_ok_and(|s| s.success()) {
                self.child.start_kill()?;
            }
            if tokio::time::timeout(DAEMON_TIMEOUT, self.child.wait())
                .await
                .is_err()
            {
                self.child.start_kill()?;
                self.child.wait().await?;
            }
        }
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        while !backend_pids(watch, &self.db).await?.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "{}'s backends on {} did not go away",
                self.name,
                self.db
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Runs `pgqd` on `db` with this ticker period (seconds) and measures its idle CPU.
async fn pgqd_cpu(
    db: &Dsn,
    period: &str,
    watch: &Client,
    sizes: Sizes,
    clock_ticks: f64,
    work_dir: &Path,
) -> Result<Cpu> {
    let mut daemon = Daemon::pgqd(db, period, work_dir).await?;
    let cpu = daemon.cpu(watch, sizes, clock_ticks).await;
    daemon.stop(watch).await?;
    cpu
}

/// The client backends connected to database `db`.
async fn backend_pids(watch: &Client, db: &str) -> Result<BTreeSet<i32>> {
    let rows = watch
        .query(BACKENDS, &[&db])
        .await
        .context("listing backends")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// CPU clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
async fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().await;
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Fields of `/proc/<pid>/stat` after the command name (from field 3, `state`).
fn stat_fields(pid: u32) -> Result<(String, Vec<u64>)> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let open = text
        .find('(')
        .with_context(|| format!("{path}: no command name"))?;
    let close = text
        .rfind(')')
        .with_context(|| format!("{path}: no command name"))?;
    let comm = text[open + 1..close].to_owned();
    let fields = text[close + 1..]
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect();
    Ok((comm, fields))
}

/// The CPU time of a process (all its threads), in seconds: the on-CPU nanoseconds of
/// `/proc/<pid>/task/*/schedstat` when the kernel keeps them, else utime + stime of
/// `/proc/<pid>/stat` (clock ticks).
fn cpu_seconds(pid: u32, clock_ticks: f64) -> Result<f64> {
    if let Some(nanos) = schedstat_nanos(pid) {
        return Ok(nanos as f64 / 1e9);
    }
    let (_, fields) = stat_fields(pid)?;
    // fields[0] is field 4 (ppid); utime and stime are fields 14 and 15
    let utime = fields.get(10).copied().unwrap_or(0);
    let stime = fields.get(11).copied().unwrap_or(0);
    Ok((utime + stime) as f64 / clock_ticks)
}

/// The summed on-CPU nanoseconds of a process's threads, when every one can be read.
fn schedstat_nanos(pid: u32) -> Option<u64> {
    let mut sum = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        sum += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// The CPU seconds of each backend that is a visible `postgres` process; those that went
/// away, or are not visible here (the server runs elsewhere), are left out.
fn backend_cpu(pids: &BTreeSet<i32>, clock_ticks: f64) -> BTreeMap<i32, f64> {
    pids.iter()
        .filter_map(|&pid| {
            let id = u32::try_from(pid).ok()?;
            let (comm, _) = stat_fields(id).ok()?;
            if !comm.starts_with("postgres") {
                return None;
            }
            Some((pid, cpu_seconds(id, clock_ticks).ok()?))
        })
        .collect()
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
    listener.batch_execute(LISTEN).await?;
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

/// The `per_cent` percentile of sorted values (nearest rank).
pub(crate) fn percentile(sorted: &[f64], per_cent: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (per_cent * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// `n` with `,` between thousands.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
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
    fn percentiles() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 99), 198.0);
        assert_eq!(percentile(&values, 50), 100.0);
        assert_eq!(percentile(&[3.0], 99), 3.0);
        assert!(percentile(&[], 50).is_nan());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(20), "20");
        assert_eq!(thousands(1000), "1,000");
    }

    #[test]
    fn child_connection_strings_drop_password_and_dbname() -> Result<()> {
        let dsn = Dsn::parse("host=127.0.0.1 port=5432 user=u password=secret dbname=d")?;
        let full = child_connstr(&dsn, false);
        assert!(
            full.contains("dbname=d") && !full.contains("password"),
            "{full}"
        );
        let base = child_connstr(&dsn, true);
        assert!(
            !base.contains("dbname") && base.contains("user=u"),
            "{base}"
        );
        assert_eq!(password(&dsn).as_deref(), Some("secret"));
        Ok(())
    }

    #[test]
    fn pauses_stay_below_the_bound() {
        let mut rng = Lcg::new(7);
        assert!((0..1000).all(|_| rng.below(10) < 10));
    }
}
