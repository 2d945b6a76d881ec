//! Ours: `londiste::Worker` in this process, replaying a backlog written while it was stopped,
//! with batch-update apply and with per-event apply.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use londiste::{AddTableOptions, ApplyMode, Config, Worker};
use pgq_consumer::CancellationToken;
use pgq_core::{ConsumerName, Dsn, QueueName};
use tokio::task::JoinHandle;

use super::builtin::{MARKER, MARKER_DDL};
use super::paced::{self, Search};
use super::workload::Workload;
use crate::harness::Server;

/// How one replay may take at most.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);
/// The queue's name on the provider.
pub(super) const QUEUE: &str = "bench_replica";
/// The ticker's period while a backlog is written.
pub(super) const TICK_PERIOD: Duration = Duration::from_millis(100);

/// How a replay applies: the apply mode, and [`Config::catch_up_events`] when not the default.
#[derive(Debug, Clone, Copy)]
pub(super) struct Apply {
    pub(super) mode: ApplyMode,
    pub(super) catch_up_events: Option<u32>,
}

/// What one run of ours measured.
pub(super) struct Ours {
    /// From `add-table --create` until every table is ok.
    pub(super) add_table_seconds: f64,
    /// Each replay's time, in the order of the applies asked for.
    pub(super) replay_seconds: Vec<f64>,
}

/// A provider and a subscriber with the workload's tables replicated by ours, the worker
/// stopped.
pub(super) struct Setup {
    pub(super) config: Config,
    pub(super) add_table_seconds: f64,
}

impl Setup {
    /// Fresh databases `<prefix>p<run>` and `<prefix>s<run>`, the workload's tables filled on
    /// the provider (with `marker`, also the lag marker) and added while the worker runs.
    pub(super) async fn new(
        server: &Server,
        prefix: &str,
        run: u32,
        workload: Workload,
        marker: bool,
    ) -> Result<Setup> {
        let provider = server.scratch_db(&format!("{prefix}p{run}")).await?;
        let subscriber = server.scratch_db(&format!("{prefix}s{run}")).await?;
        let config = Config::new(
            provider.clone(),
            subscriber,
            QueueName::new(QUEUE)?,
            Some(ConsumerName::new("bench_worker")?),
        );
        londiste::init(&config).await?;
        workload.fill(&provider).await?;
        let p = provider.connect().await?;
        if marker {
            p.batch_execute(MARKER_DDL)
                .await
                .context("creating the marker")?;
        }
        p.batch_execute(&format!(
            "SELECT pgq.set_queue_config('{QUEUE}', 'ticker_max_lag', '100 ms');
             SELECT pgq.set_queue_config('{QUEUE}', 'ticker_idle_period', '1 s');"
        ))
        .await
        .context("setting the queue's tick rules")?;
        let (cancel, worker) = start(&config).await?;
        let started = Instant::now();
        let options = AddTableOptions {
            create: true,
            wait: Duration::from_secs(120),
            ..AddTableOptions::default()
        };
        let marker_table = marker.then_some(MARKER);
        let tables: Vec<String> = workload
            .tables()
            .iter()
            .copied()
            .chain(marker_table)
            .map(str::to_owned)
            .collect();
        let added = londiste::add_tables(&config, &tables, &options).await?;
        let add_table_seconds = started.elapsed().as_secs_f64();
        for table in &added {
            ensure!(
                table.state == londiste::TableState::Ok,
                "add-table ended {}",
                table.state
            );
        }
        cancel.cancel();
        worker.await??;
        Ok(Setup {
            config,
            add_table_seconds,
        })
    }
}

/// Starts a worker for `config`.
pub(super) async fn start(
    config: &Config,
) -> Result<(CancellationToken, JoinHandle<londiste::Result<()>>)> {
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(Worker::connect(config).await?.run(cancel.clone()));
    Ok((cancel, worker))
}

/// One run of ours: add-table, then a replay of a backlog of the workload per apply.
pub(super) async fn run(
    server: &Server,
    run: u32,
    workload: Workload,
    applies: &[Apply],
) -> Result<Ours> {
    let Setup {
        mut config,
        add_table_seconds,
    } = Setup::new(
        server,
        &format!("l{}", workload.tag()),
        run,
        workload,
        false,
    )
    .await?;
    let default_catch_up = config.catch_up_events;
    let mut replay_seconds = Vec::new();
    for (round, apply) in (0..).zip(applies) {
        let target = backlog(&config.provider, workload, round).await?;
        config.apply = apply.mode;
        config.catch_up_events = apply.catch_up_events.unwrap_or(default_catch_up);
        replay_seconds.push(replay(&config, target).await?);
    }
    ensure!(
        workload.digest(&config.provider).await? == workload.digest(&config.subscriber).await?,
        "ours left the tables different"
    );
    Ok(Ours {
        add_table_seconds,
        replay_seconds,
    })
}

/// Runs `pgq.ticker()` on `provider` every [`TICK_PERIOD`] until the flag is set.
pub(super) fn ticker(provider: &Dsn, stop: Arc<AtomicBool>) -> JoinHandle<Result<()>> {
    let dsn = provider.clone();
    tokio::spawn(async move {
        let client = dsn.connect().await?;
        while !stop.load(Ordering::Relaxed) {
            client.batch_execute("SELECT pgq.ticker()").await?;
            tokio::time::sleep(TICK_PERIOD).await;
        }
        anyhow::Ok(())
    })
}

/// Commits a backlog while a ticker runs; returns the last tick, which holds it all.
async fn backlog(provider: &Dsn, workload: Workload, round: u64) -> Result<i64> {
    let stop = Arc::new(AtomicBool::new(false));
    let ticking = ticker(provider, Arc::clone(&stop));
    let written = workload.write_backlog(provider, round).await;
    stop.store(true, Ordering::Relaxed);
    ticking.await??;
    written?;
    let client = provider.connect().await?;
    client
        .batch_execute(&format!(
            "SELECT pgq.force_tick('{QUEUE}'); SELECT pgq.ticker('{QUEUE}')"
        ))
        .await?;
    let row = client
        .query_one("SELECT max(tick_id) FROM pgq.tick", &[])
        .await?;
    Ok(row.get(0))
}

/// Starts a worker and times it until it reaches `target`.
async fn replay(config: &Config, target: i64) -> Result<f64> {
    let watch = config.subscriber.connect().await?;
    let started = Instant::now();
    let (cancel, worker) = start(config).await?;
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

/// The paced search ([`paced::search`]) against ours replicating `accounts` of `rows` rows
/// live, with a ticker every [`TICK_PERIOD`].
pub(super) async fn paced(
    server: &Server,
    rows: u64,
    step: Duration,
    max_steps: usize,
) -> Result<Search> {
    let workload = Workload::Uniform { rows, updates: 0 };
    let Setup { config, .. } = Setup::new(server, "lr", 0, workload, true).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ticking = ticker(&config.provider, Arc::clone(&stop));
    let (cancel, worker) = start(&config).await?;
    let found = paced::search(&config.provider, &config.subscriber, rows, step, max_steps).await;
    cancel.cancel();
    stop.store(true, Ordering::Relaxed);
    worker.await??;
    ticking.await??;
    found
}
