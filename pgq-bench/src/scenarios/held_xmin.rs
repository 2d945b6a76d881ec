//! Scenario `held-xmin`: draining a standing backlog while a session holds back the xmin
//! horizon.
//!
//! Before anything runs, a session takes a transaction id (`BEGIN; SELECT txid_current()`) and
//! sits idle in its transaction until the end, so no dead tuple in the database can be
//! removed, by VACUUM nor by page pruning. The ticker daemon starts (ours: `pgq-ticker run` on
//! our schema; the reference: `pgqd` on the original extension, both with a 100 ms period),
//! producers fill a backlog of 100,000 events (with `--quick`, 20,000) and then keep it
//! topped up, while one consumer drains: ours is our [`Runner`]; the reference is the same
//! loop in Rust against the extension (`next_batch`, `get_batch_events`, `finish_batch` in one
//! transaction), so the comparison is of the schemas, not of client languages.
//!
//! Each variant runs for `--hold` seconds (300; 60 with `--quick`). The drain rate is taken
//! over two windows of a sixth of that: one ending at a fifth of the run (0:10–1:00 of 5
//! minutes, 0:02–0:12 of 60 s) and one ending at its end (4:10–5:00, 0:50–1:00). Dead tuples of
//! every table of schema `pgq` are counted when the backlog is full and again at the end,
//! with the snapshot still held: exactly with `pgstattuple` when the server has it, else from
//! the statistics collector's `n_dead_tup`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use pgq_consumer::{ConsumerConfig, Runner};
use pgq_core::{ConsumerName, Dsn, QueueName};
use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::harness::{reference, Bench, Counter, Daemon, Part, Producer, Server, Side, WorkDir};
use crate::report::{Limit, Measure, Ratio, Report, Sample, Series};

/// The queue.
const QUEUE: &str = "held";
/// The consumer.
const CONSUMER: &str = "drain";
/// Producers topping the backlog up.
const PRODUCERS: u64 = 2;
/// Events per producer transaction.
const PER_TX: u64 = 500;
/// Bytes of `ev_data` per event.
const DATA_BYTES: i32 = 100;
/// Both daemons' ticker period.
const PERIOD: Duration = Duration::from_millis(100);
/// How long the consumer waits when there is no batch, and producers when the backlog is full.
const IDLE: Duration = Duration::from_millis(5);
/// Upper bound on dead tuples the meta tables may gain per batch taken, ours: `next_batch` and
/// `finish_batch` each update the consumer's `pgq.subscription` row once.
const META_DEAD_PER_BATCH_MAX: f64 = 2.0;
/// Upper bound on dead tuples in the event tables at the end, ours: they are insert-only.
const EVENT_DEAD_MAX: f64 = 0.0;

const EARLY: &str = "drain, early window";
const LATE: &str = "drain, late window";
const OURS: &str = "ours (pgq-ticker + Runner)";
const REFERENCE: &str = "reference (pgqd + Rust batch loop)";

/// What the producers insert.
const PRODUCER: Producer = Producer {
    queue: QUEUE,
    data_bytes: DATA_BYTES,
    per_tx: PER_TX,
};
// language=SQL
const AVAILABLE: &str =
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = $1)";
// language=SQL
const HOLD: &str = "BEGIN; SELECT txid_current();";
// language=SQL
const HOLDER: &str = "SELECT backend_xid::text FROM pg_catalog.pg_stat_activity \
     WHERE pid = $1 AND state = 'idle in transaction'";
// language=SQL
const DEAD_EXACT: &str = "SELECT c.relname::text, (pgstattuple(c.oid)).dead_tuple_count \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = 'pgq' AND c.relkind = 'r' ORDER BY 1";
// language=SQL
const DEAD_STATS: &str = "SELECT c.relname::text, pg_catalog.pg_stat_get_dead_tuples(c.oid) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = 'pgq' AND c.relkind = 'r' ORDER BY 1";
// language=SQL
const TICKS: &str = "SELECT count(*) FROM pgq.tick";
// language=SQL
const REF_NEXT: &str = "SELECT pgq.next_batch($1, $2)";
// language=SQL
const REF_EVENTS: &str = "SELECT ev_id, ev_data FROM pgq.get_batch_events($1)";
// language=SQL
const REF_FINISH: &str = "SELECT pgq.finish_batch($1)";

/// When each measurement happens, from the consumer's start.
#[derive(Debug, Clone, Copy)]
struct Timing {
    run: Duration,
    window: Duration,
}

impl Timing {
    fn new(run: Duration) -> Timing {
        Timing {
            run,
            window: run / 6,
        }
    }

    fn early(self) -> (Duration, Duration) {
        let end = self.run / 5;
        (end.saturating_sub(self.window), end)
    }

    fn late(self) -> (Duration, Duration) {
        (self.run - self.window, self.run)
    }
}

/// Dead tuples per table of schema `pgq`.
#[derive(Debug, Clone, Default)]
struct Dead(Vec<(String, i64)>);

impl Dead {
    fn events(&self) -> f64 {
        self.sum(true)
    }

    fn meta(&self) -> f64 {
        self.sum(false)
    }

    fn sum(&self, events: bool) -> f64 {
        self.0
            .iter()
            .filter(|(name, _)| is_event_table(name) == events)
            .map(|(_, n)| *n as f64)
            .sum()
    }
}

/// Event tables (the template, each queue's parent and its rotated children) by name: both
/// designs call them `event_*`.
fn is_event_table(name: &str) -> bool {
    name.starts_with("event_")
}

/// What one variant's run measured.
#[derive(Debug)]
struct Held {
    early: Sample,
    late: Sample,
    backlog_early: u64,
    backlog_late: u64,
    batches: u64,
    ticks: u64,
    start: Dead,
    end: Dead,
}

/// Shared counters of one run.
#[derive(Debug, Default)]
struct Counters {
    produced: AtomicU64,
    /// The consumer: it counts the events processed.
    consumed: Arc<Counter>,
    batches: AtomicU64,
    stop: AtomicBool,
}

/// How the figures are made: `backlog` events kept, held `hold` with these windows; dead tuples
/// counted `exact`ly or not.
fn method(backlog: u64, hold: Duration, timing: Timing, exact: bool) -> Vec<String> {
    let (early, late) = (timing.early(), timing.late());
    vec![
        format!(
            "A session runs `BEGIN; SELECT txid_current();` first and stays idle in that \
             transaction until the end, so nothing dead can be removed. The daemon ticks \
             every {}ms; {PRODUCERS} producers fill a backlog of {backlog} events of \
             {DATA_BYTES} bytes, then keep it topped up in transactions of {PER_TX} while one \
             consumer drains. Each variant runs {} s per run on a fresh database.",
            PERIOD.as_millis(),
            hold.as_secs()
        ),
        format!(
            "Drain rate: events processed in the early window ({}–{}) and the late window \
             ({}–{}) from the consumer's start, divided by the window's length; `reps × \
             events` shows the backlog kept. The backlog left at each window's end is \
             reported: near zero would mean the producers, not the consumer, set the pace.",
            clock(early.0),
            clock(early.1),
            clock(late.0),
            clock(late.1)
        ),
        format!(
            "`{OURS}`: our schema, `pgq-ticker run` and our `Runner` (default settings). \
             `{REFERENCE}`: the original extension, `pgqd` and a loop in this process doing \
             `pgq.next_batch`, `pgq.get_batch_events` (all rows fetched) and \
             `pgq.finish_batch` in one transaction per batch."
        ),
        format!(
            "Dead tuples of every table of schema `pgq`, {}, when the backlog is first full \
             (start) and at the end, with the snapshot still held. Meta tables are all but \
             `event_*`. Bound on ours: at most {META_DEAD_PER_BATCH_MAX} new dead tuples in \
             the meta tables per batch (`next_batch` and `finish_batch` each update the \
             consumer's `pgq.subscription` row, as in PGQ; under a held xmin neither version \
             can be pruned, so this grows with batches, not with events) and \
             {EVENT_DEAD_MAX} in the event tables (insert-only, rotated by TRUNCATE).",
            if exact {
                "counted by `pgstattuple`"
            } else {
                "from `n_dead_tup` (pgstattuple is not available; flushed statistics may lag \
                 by a second)"
            }
        ),
    ]
}

/// Runs the scenario on scratch databases of the bench's server, a fresh one per side and run.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let plan = bench.plan;
    let backlog: u64 = if plan.small { 20_000 } else { 100_000 };
    let timing = Timing::new(plan.hold);
    let ticker_bin = bench.ticker_binary()?;
    let work_dir = WorkDir::new("held-xmin")?;
    let maintenance = bench.server.maintenance().connect().await?;
    let exact = available(&maintenance, "pgstattuple").await?;
    drop(maintenance);
    let mut notes = method(backlog, plan.hold, timing, exact);
    let parts = [Part::Extension, Part::Pgqd];
    let sides = if reference(bench.server, &parts, "the reference is skipped", &mut notes).await? {
        vec![Side::Ours, Side::Reference]
    } else {
        vec![Side::Ours]
    };
    let setup = Setup {
        server: bench.server,
        backlog,
        timing,
        exact,
        ticker_bin: &ticker_bin,
        work_dir: work_dir.path(),
    };
    let mut results: Vec<Vec<Held>> = sides.iter().map(|_| Vec::new()).collect();
    for run in 1..=plan.runs {
        for (i, &side) in sides.iter().enumerate() {
            let held = measure(&setup, side, run)
                .await
                .with_context(|| format!("{} run {run}", side.pick(OURS, REFERENCE)))?;
            tracing::info!(
                run,
                side = side.pick(OURS, REFERENCE),
                early = held.early.events_per_sec,
                late = held.late.events_per_sec,
                meta_dead_start = held.start.meta(),
                meta_dead_end = held.end.meta(),
                batches = held.batches,
                "held xmin"
            );
            results[i].push(held);
        }
    }

    Ok(report(notes, backlog, &sides, &results))
}

/// The report: drain rates per window, the figures of every run, ratios and limits.
fn report(notes: Vec<String>, backlog: u64, sides: &[Side], results: &[Vec<Held>]) -> Report {
    let mut series = Vec::new();
    let mut measures = Vec::new();
    for (side, runs) in sides.iter().zip(results) {
        let variant = side.pick(OURS, REFERENCE);
        for (shape, pick) in [
            (EARLY, (|h: &Held| h.early) as fn(&Held) -> Sample),
            (LATE, |h: &Held| h.late),
        ] {
            series.push(Series {
                shape,
                variant,
                reps: 1,
                events_per_rep: backlog,
                samples: runs.iter().map(pick).collect(),
            });
        }
        let mut figure = |what: &str, metric: &'static str, f: &dyn Fn(&Held) -> f64| {
            measures.push(Measure {
                what: what.to_owned(),
                variant,
                metric,
                samples: runs.iter().map(f).collect(),
            });
        };
        figure("backlog at the early window's end", "events", &|h| {
            h.backlog_early as f64
        });
        figure("backlog at the late window's end", "events", &|h| {
            h.backlog_late as f64
        });
        figure("batches taken", "batches", &|h| h.batches as f64);
        figure("ticks at the end", "ticks", &|h| h.ticks as f64);
        figure("dead tuples, meta tables, start", "tuples", &|h| {
            h.start.meta()
        });
        figure("dead tuples, meta tables, end", "tuples", &|h| h.end.meta());
        figure("dead tuples, event tables, start", "tuples", &|h| {
            h.start.events()
        });
        figure("dead tuples, event tables, end", "tuples", &|h| {
            h.end.events()
        });
        figure("meta-table dead tuples added per batch", "tuples", &|h| {
            (h.end.meta() - h.start.meta()) / h.batches.max(1) as f64
        });
        let tables: Vec<String> = runs
            .first()
            .map(|h| {
                h.end
                    .0
                    .iter()
                    .map(|(name, _)| name.clone())
                    .filter(|name| !is_event_table(name))
                    .collect()
            })
            .unwrap_or_default();
        for table in tables {
            figure(
                &format!("dead tuples at end, pgq.{table}"),
                "tuples",
                &|h| {
                    h.end
                        .0
                        .iter()
                        .find(|(name, _)| *name == table)
                        .map_or(f64::NAN, |(_, n)| *n as f64)
                },
            );
        }
    }
    let find = |shape: &str, variant: &str| {
        series
            .iter()
            .find(|s| s.shape == shape && s.variant == variant)
    };
    let ratios = vec![
        Ratio::of(
            format!("{OURS}, late / early window"),
            find(LATE, OURS),
            find(EARLY, OURS),
            Some(0.9),
        ),
        Ratio::of(
            format!("{REFERENCE}, late / early window"),
            find(LATE, REFERENCE),
            find(EARLY, REFERENCE),
            None,
        ),
        Ratio::of(
            format!("{OURS} / {REFERENCE}, late window"),
            find(LATE, OURS),
            find(LATE, REFERENCE),
            None,
        ),
    ];
    let measure = |what: &str| {
        measures
            .iter()
            .find(|m| m.what == what && m.variant == OURS)
    };
    let limits = vec![
        Limit::of(
            "ours: meta-table dead tuples added per batch",
            measure("meta-table dead tuples added per batch"),
            META_DEAD_PER_BATCH_MAX,
        ),
        Limit::of(
            "ours: event-table dead tuples at the end",
            measure("dead tuples, event tables, end"),
            EVENT_DEAD_MAX,
        ),
    ];
    Report {
        scenario: "held-xmin",
        notes,
        series,
        ratios,
        measures,
        limits,
    }
}

/// `m:ss` of a duration.
fn clock(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// What every run shares.
struct Setup<'a> {
    server: &'a Server,
    backlog: u64,
    timing: Timing,
    /// Whether dead tuples are counted by `pgstattuple`.
    exact: bool,
    ticker_bin: &'a Path,
    work_dir: &'a Path,
}

/// One run of one side on a fresh database.
async fn measure(setup: &Setup<'_>, side: Side, run: u32) -> Result<Held> {
    let Setup {
        server,
        backlog,
        timing,
        exact,
        ticker_bin,
        work_dir,
    } = *setup;
    let (dsn, client) = side.database(server, &format!("held_r{run}")).await?;
    if exact {
        client.batch_execute("CREATE EXTENSION pgstattuple").await?;
    }
    let queue = QueueName::new(QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    pgq_core::register_consumer(&client, &queue, &ConsumerName::new(CONSUMER)?).await?;

    let hold = dsn.connect().await?;
    hold.batch_execute(HOLD).await?;
    let hold_pid: i32 = hold.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let holder = holder_xid(&client, hold_pid).await?;

    let watch = server.maintenance().connect().await?;
    let daemon = match side {
        Side::Ours => Daemon::ours(ticker_bin, &dsn, PERIOD, work_dir).await?,
        Side::Reference => Daemon::pgqd(&dsn, PERIOD, work_dir).await?,
    };
    let counters = Arc::new(Counters::default());
    let mut tasks = JoinSet::new();
    let result = async {
        PRODUCER.fill(&dsn, backlog, PRODUCERS).await?;
        counters.produced.store(backlog, Ordering::Relaxed);
        let start = dead_tuples(&client, exact).await?;
        match side {
            Side::Ours => tasks.spawn(drain_ours(dsn.clone(), counters.clone())),
            Side::Reference => tasks.spawn(drain_reference(dsn.clone(), counters.clone())),
        };
        for _ in 0..PRODUCERS {
            tasks.spawn(top_up(dsn.clone(), counters.clone(), backlog));
        }
        let t0 = tokio::time::Instant::now();
        let mut windows = Vec::with_capacity(2);
        for (from, to) in [timing.early(), timing.late()] {
            let first = consumed_at(t0 + from, &counters, &mut tasks).await?;
            let last = consumed_at(t0 + to, &counters, &mut tasks).await?;
            let left = counters
                .produced
                .load(Ordering::Relaxed)
                .saturating_sub(last);
            windows.push(((last - first), (to - from).as_secs_f64(), left));
        }
        let (early, late) = (windows[0], windows[1]);
        // The consumer stops first, so that the count of batches matches the dead tuples.
        stop(&counters, &mut tasks).await?;
        let batches = counters.batches.load(Ordering::Relaxed);
        let end = dead_tuples(&client, exact).await?;
        let ticks: i64 = client.query_one(TICKS, &[]).await?.get(0);
        ensure!(
            holder_xid(&client, hold_pid).await? == holder,
            "the session holding the xmin horizon moved on"
        );
        anyhow::Ok((early, late, batches, ticks, start, end))
    }
    .await;
    let stopped = stop(&counters, &mut tasks).await;
    drop(hold);
    drop(client);
    daemon.stop(&watch).await?;
    let ((early, early_s, backlog_early), (late, late_s, backlog_late), batches, ticks, start, end) =
        result?;
    stopped?;
    Ok(Held {
        early: Sample::new(run, early, early_s),
        late: Sample::new(run, late, late_s),
        backlog_early,
        backlog_late,
        batches,
        ticks: u64::try_from(ticks)?,
        start,
        end,
    })
}

/// Tells the consumer and the producers to stop and waits for them.
async fn stop(counters: &Counters, tasks: &mut JoinSet<Result<()>>) -> Result<()> {
    counters.stop.store(true, Ordering::Relaxed);
    let mut stopped = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            stopped = Err(err);
        }
    }
    stopped
}

/// The transaction id of the session holding the horizon; an error when it is not idle in its
/// transaction.
async fn holder_xid(client: &Client, pid: i32) -> Result<String> {
    client
        .query_opt(HOLDER, &[&pid])
        .await?
        .and_then(|row| row.get::<_, Option<String>>(0))
        .context("the session holding the xmin horizon is not idle in its transaction")
}

/// Dead tuples per table of schema `pgq`.
async fn dead_tuples(client: &Client, exact: bool) -> Result<Dead> {
    if !exact {
        client
            .batch_execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
            .await?;
    }
    let rows = client
        .query(if exact { DEAD_EXACT } else { DEAD_STATS }, &[])
        .await
        .context("counting dead tuples")?;
    Ok(Dead(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

/// Whether the server can create extension `name`.
async fn available(client: &Client, name: &str) -> Result<bool> {
    Ok(client.query_one(AVAILABLE, &[&name]).await?.get(0))
}

/// The events processed so far, read at `at`; an error when a producer or the consumer
/// stopped before.
async fn consumed_at(
    at: tokio::time::Instant,
    counters: &Counters,
    tasks: &mut JoinSet<Result<()>>,
) -> Result<u64> {
    tokio::select! {
        () = tokio::time::sleep_until(at) => {}
        Some(done) = tasks.join_next() => {
            done??;
            anyhow::bail!("a producer or the consumer stopped early");
        }
    }
    Ok(counters.consumed.events())
}

/// Keeps the backlog (events produced, not yet processed) at `backlog` until told to stop.
async fn top_up(dsn: Dsn, counters: Arc<Counters>, backlog: u64) -> Result<()> {
    let producing = PRODUCER.connect(&dsn).await?;
    while !counters.stop.load(Ordering::Relaxed) {
        let consumed = counters.consumed.events();
        let produced = counters.produced.load(Ordering::Relaxed);
        if produced.saturating_sub(consumed) >= backlog {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let first = counters.produced.fetch_add(PER_TX, Ordering::Relaxed);
        producing.insert(first + 1, first + PER_TX).await?;
    }
    Ok(())
}

/// Ours: our Runner, one batch at a time, until told to stop.
async fn drain_ours(dsn: Dsn, counters: Arc<Counters>) -> Result<()> {
    let config = ConsumerConfig::builder(QueueName::new(QUEUE)?, ConsumerName::new(CONSUMER)?)
        .register(false)
        .build();
    let mut runner = Runner::connect(&dsn, config, counters.consumed.clone()).await?;
    while !counters.stop.load(Ordering::Relaxed) {
        match runner.process_next_batch().await? {
            Some(_) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
            }
            None => tokio::time::sleep(IDLE).await,
        }
    }
    Ok(())
}

/// The reference: the extension's batch functions, one transaction per batch, until told to
/// stop.
async fn drain_reference(dsn: Dsn, counters: Arc<Counters>) -> Result<()> {
    let mut client = dsn.connect().await?;
    let next = client.prepare(REF_NEXT).await?;
    let events = client.prepare(REF_EVENTS).await?;
    let finish = client.prepare(REF_FINISH).await?;
    while !counters.stop.load(Ordering::Relaxed) {
        let tx = client.transaction().await?;
        let batch: Option<i64> = tx.query_one(&next, &[&QUEUE, &CONSUMER]).await?.get(0);
        let Some(batch) = batch else {
            tx.commit().await?;
            tokio::time::sleep(IDLE).await;
            continue;
        };
        let rows = tx.query(&events, &[&batch]).await?;
        let bytes = rows
            .iter()
            .map(|r| r.get::<_, Option<&str>>(1).map_or(0, str::len))
            .sum();
        tx.query_one(&finish, &[&batch]).await?;
        tx.commit().await?;
        counters.consumed.add(rows.len(), bytes);
        counters.batches.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let full = Timing::new(Duration::from_secs(300));
        assert_eq!(
            full.early(),
            (Duration::from_secs(10), Duration::from_secs(60))
        );
        assert_eq!(
            full.late(),
            (Duration::from_secs(250), Duration::from_secs(300))
        );
        let quick = Timing::new(Duration::from_secs(60));
        assert_eq!(
            quick.early(),
            (Duration::from_secs(2), Duration::from_secs(12))
        );
        assert_eq!(
            quick.late(),
            (Duration::from_secs(50), Duration::from_secs(60))
        );
        assert_eq!(clock(Duration::from_secs(250)), "4:10");
    }

    #[test]
    fn meta_and_event_tables() {
        let dead = Dead(vec![
            ("subscription".to_owned(), 6),
            ("tick".to_owned(), 1),
            ("event_1".to_owned(), 0),
            ("event_1_0".to_owned(), 4),
        ]);
        assert_eq!((dead.meta(), dead.events()), (7.0, 4.0));
    }
}
