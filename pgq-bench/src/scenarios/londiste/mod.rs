//! Scenario `londiste`: table replication, ours vs python3-londiste (londiste3).
//!
//! A pgbench-like `accounts` table of 100,000 rows (with `--quick`, 10,000) is added to the
//! replication with the worker running: the time from `add-table` until the table is `ok`.
//! Then, with the worker stopped, 2,000 transactions of 100 single-row updates each (200,000
//! updates over the 100,000 hot rows, each row twice) are committed on the provider while a
//! ticker ticks every 100 ms (`ticker_max_lag` 100 ms), and the worker is started: source
//! events applied per second until it reaches the last tick. Ours runs in this process with
//! batch-update apply and with per-event apply; the reference is `python/londiste_ref.py`
//! (londiste3 with pgqd, its default handler and its bulk handler) on the same server.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use londiste::{AddTableOptions, ApplyMode, Config, Worker};
use pgq_consumer::CancellationToken;
use pgq_core::{ConsumerName, Dsn, QueueName};
use serde::Deserialize;

use crate::harness::{python_command, reference, Bench, Part, Server, WorkDir, PYTHON};
use crate::report::{Limit, Measure, Ratio, Report, Sample, Series};

/// Updates per provider transaction.
const TXN_SIZE: u64 = 100;
/// Distinct rows per transaction are spread with this stride (as `londiste_ref.py` does).
const STRIDE: u64 = 7919;
/// How long one replay may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);

const SHAPE: &str = "replay of single-row updates";
const BATCH: &str = "ours batch-update apply";
const PER_EVENT: &str = "ours per-event apply";
const REF_DEFAULT: &str = "londiste3 default handler";
const REF_BULK: &str = "londiste3 bulk handler";

/// What `londiste_ref.py` prints.
#[derive(Deserialize)]
struct Reference {
    add_table_to_ok_s: f64,
    replay: ReferenceReplay,
    md5_match: bool,
}

#[derive(Deserialize)]
struct ReferenceReplay {
    default: ReferenceRun,
    bulk: ReferenceRun,
}

#[derive(Deserialize)]
struct ReferenceRun {
    events: u64,
    seconds: f64,
}

/// How the figures are made.
fn method(rows: u64, updates: u64) -> Vec<String> {
    vec![
        format!(
            "accounts(aid int primary key, bid int, abalance int, filler char(84)), {rows} rows. \
             add-table to ok: from `add-table --create` (one copy connection) to state ok, with \
             the worker running. Replay: {updates} updates committed by a server-side loop in \
             transactions of {TXN_SIZE} rows while a ticker ticks every 100 ms (ticker_max_lag \
             100 ms), the worker stopped; then the worker starts and the clock runs until it \
             reached the last tick. Source events applied per second."
        ),
        format!(
            "Ours: `londiste::Worker` in this process over TCP, default settings (chunk 5,000 \
             events, 64 MiB merge limit). Reference: `python/londiste_ref.py` under {PYTHON} \
             (londiste3 3.11 with pgqd at a 0.1 s period and the same queue settings; its bulk \
             handler after `change-handler --handler=bulk`). Each side gets fresh databases per \
             run."
        ),
    ]
}

/// Runs the scenario on scratch databases of the bench's server.
pub(crate) async fn run(bench: &Bench<'_>) -> Result<Report> {
    let (plan, server) = (bench.plan, bench.server);
    let (rows, updates) = if plan.small {
        (10_000, 20_000)
    } else {
        (100_000, 200_000)
    };
    let mut notes = method(rows, updates);
    let parts = [Part::Pgqd, Part::PythonLondiste];
    let with_reference = reference(server, &parts, "the reference is skipped", &mut notes).await?;
    let work_dir = WorkDir::new("londiste")?;
    let mut batch = Vec::new();
    let mut per_event = Vec::new();
    let mut ref_default = Vec::new();
    let mut ref_bulk = Vec::new();
    let mut add_ours = Vec::new();
    let mut add_ref = Vec::new();
    for run in 1..=plan.runs {
        let ours = run_ours(server, run, rows, updates).await?;
        add_ours.push(ours.add_table_seconds);
        batch.push(Sample::new(run, updates, ours.batch_seconds));
        per_event.push(Sample::new(run, updates, ours.per_event_seconds));
        if with_reference {
            let r = run_reference(server, run, rows, updates, &work_dir).await?;
            ensure!(r.md5_match, "londiste3 left the tables different");
            add_ref.push(r.add_table_to_ok_s);
            let (default, bulk) = (&r.replay.default, &r.replay.bulk);
            ref_default.push(Sample::new(run, default.events, default.seconds));
            ref_bulk.push(Sample::new(run, bulk.events, bulk.seconds));
        }
    }
    let series_of = |variant: &'static str, samples: Vec<Sample>| Series {
        shape: SHAPE,
        variant,
        reps: 1,
        events_per_rep: updates,
        samples,
    };
    let mut series = vec![series_of(BATCH, batch), series_of(PER_EVENT, per_event)];
    if with_reference {
        series.push(series_of(REF_DEFAULT, ref_default));
        series.push(series_of(REF_BULK, ref_bulk));
    }
    let find = |variant: &str| series.iter().find(|s| s.variant == variant);
    let ratios = vec![
        Ratio::of(
            "ours batch-update / londiste3 default handler",
            find(BATCH),
            find(REF_DEFAULT),
            Some(5.0),
        ),
        Ratio::of(
            "ours batch-update / ours per-event",
            find(BATCH),
            find(PER_EVENT),
            Some(3.0),
        ),
        Ratio::of(
            "ours batch-update / londiste3 bulk handler",
            find(BATCH),
            find(REF_BULK),
            None,
        ),
    ];
    let mut measures = vec![Measure {
        what: format!("add-table to ok, {rows} rows"),
        variant: "ours",
        metric: "seconds",
        samples: add_ours,
    }];
    if with_reference {
        measures.push(Measure {
            what: format!("add-table to ok, {rows} rows"),
            variant: "londiste3",
            metric: "seconds",
            samples: add_ref,
        });
    }
    let limits = vec![Limit::of("ours add-table to ok (s)", measures.first(), 3.0)];
    Ok(Report {
        scenario: "londiste",
        notes,
        series,
        ratios,
        measures,
        limits,
    })
}

struct Ours {
    add_table_seconds: f64,
    batch_seconds: f64,
    per_event_seconds: f64,
}

async fn run_ours(server: &Server, run: u32, rows: u64, updates: u64) -> Result<Ours> {
    let provider = server.scratch_db(&format!("lp{run}")).await?;
    let subscriber = server.scratch_db(&format!("ls{run}")).await?;
    let mut config = Config::new(
        provider.clone(),
        subscriber.clone(),
        QueueName::new("bench_replica")?,
        Some(ConsumerName::new("bench_worker")?),
    );
    londiste::init(&config).await?;
    let p = provider.connect().await?;
    p.batch_execute(&format!(
        "SELECT pgq.set_queue_config('bench_replica', 'ticker_max_lag', '100 ms');
         SELECT pgq.set_queue_config('bench_replica', 'ticker_idle_period', '1 s');
         CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
         INSERT INTO accounts SELECT g, 1, 0, '' FROM generate_series(1, {rows}) g;"
    ))
    .await
    .context("preparing accounts")?;
    p.batch_execute("VACUUM ANALYZE accounts")
        .await
        .context("vacuuming accounts")?;

    let cancel = CancellationToken::new();
    let worker = tokio::spawn(Worker::connect(&config).await?.run(cancel.clone()));
    let started = Instant::now();
    let options = AddTableOptions {
        create: true,
        wait: Duration::from_secs(120),
        ..AddTableOptions::default()
    };
    let added = londiste::add_tables(&config, &["public.accounts".to_owned()], &options).await?;
    let add_table_seconds = started.elapsed().as_secs_f64();
    ensure!(
        added[0].state == londiste::TableState::Ok,
        "add-table ended {}",
        added[0].state
    );
    cancel.cancel();
    worker.await??;

    let mut seconds = Vec::new();
    for (round, apply) in [ApplyMode::Batch, ApplyMode::PerEvent]
        .into_iter()
        .enumerate()
    {
        let target = backlog(&provider, updates, rows, round).await?;
        config.apply = apply;
        seconds.push(replay(&config, &subscriber, target).await?);
    }
    let same = |dsn: Dsn| async move {
        let client = dsn.connect().await?;
        let row = client
            .query_one(
                "SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM accounts a",
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, Option<String>>(0))
    };
    ensure!(
        same(provider).await? == same(subscriber).await?,
        "ours left the tables different"
    );
    Ok(Ours {
        add_table_seconds,
        batch_seconds: seconds[0],
        per_event_seconds: seconds[1],
    })
}

/// Commits the updates while a ticker runs; returns the last tick, which holds them all.
async fn backlog(provider: &Dsn, updates: u64, rows: u64, round: usize) -> Result<i64> {
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let stop = Arc::clone(&stop);
        let dsn = provider.clone();
        tokio::spawn(async move {
            let client = dsn.connect().await?;
            while !stop.load(Ordering::Relaxed) {
                client.batch_execute("SELECT pgq.ticker()").await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    let client = provider.connect().await?;
    let txns = updates / TXN_SIZE;
    let offset = u64::try_from(round).unwrap_or(0) * txns;
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
               FOR t IN {offset} .. {last} LOOP
                 UPDATE accounts SET abalance = abalance + 1
                  WHERE aid = ANY (ARRAY(SELECT ((t::bigint * {TXN_SIZE} + k) * {STRIDE}) % {rows} + 1
                                           FROM generate_series(0, {TXN_SIZE} - 1) k));
                 COMMIT;
               END LOOP;
             END $$",
            last = offset + txns - 1
        ))
        .await
        .context("committing the backlog")?;
    stop.store(true, Ordering::Relaxed);
    ticker.await??;
    client
        .batch_execute("SELECT pgq.force_tick('bench_replica'); SELECT pgq.ticker('bench_replica')")
        .await?;
    let row = client
        .query_one("SELECT max(tick_id) FROM pgq.tick", &[])
        .await?;
    Ok(row.get(0))
}

/// Starts a worker and times it until it reaches `target`.
async fn replay(config: &Config, subscriber: &Dsn, target: i64) -> Result<f64> {
    let watch = subscriber.connect().await?;
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let worker = tokio::spawn(Worker::connect(config).await?.run(cancel.clone()));
    loop {
        let position: Option<i64> = watch
            .query_one(
                "SELECT max(last_tick) FROM londiste_rs.worker_position",
                &[],
            )
            .await?
            .get(0);
        if position.is_some_and(|p| p >= target) {
            break;
        }
        ensure!(
            started.elapsed() < REPLAY_TIMEOUT,
            "the replay did not finish"
        );
        ensure!(!worker.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    cancel.cancel();
    worker.await??;
    Ok(seconds)
}

async fn run_reference(
    server: &Server,
    run: u32,
    rows: u64,
    updates: u64,
    work_dir: &WorkDir,
) -> Result<Reference> {
    let provider = server.scratch_db(&format!("rp{run}")).await?;
    let subscriber = server.scratch_db(&format!("rs{run}")).await?;
    let dir = work_dir.join(format!("ref{run}"));
    let (rows, updates) = (rows.to_string(), updates.to_string());
    let args = [
        "--provider",
        &provider.conninfo(),
        "--subscriber",
        &subscriber.conninfo(),
        "--rows",
        &rows,
        "--updates",
        &updates,
        "--create",
        "--skip-trigger-tps",
    ];
    let out = python_command("londiste_ref.py", args, &provider)
        .arg("--workdir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running londiste_ref.py")?;
    ensure!(
        out.status.success(),
        "londiste_ref.py failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("reading londiste_ref.py's JSON")
}
