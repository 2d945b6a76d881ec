//! Replication while the provider is being written to: a 100,000-row pgbench-like table
//! added with a parallel copy under 4 writers, with the worker running (and killed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use londiste::{AddTableOptions, TableState, Worker};
use pgq_consumer::CancellationToken;
use pgq_testkit::{wait_for, Deadline, Process, TempDir};

use crate::common::Pair;

const ROWS: i32 = 100_000;

async fn accounts(pair: &Pair) -> anyhow::Result<()> {
    pair.provider
        .batch_execute(&format!(
            "CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL,
                                    filler char(84));
             INSERT INTO accounts SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, {ROWS}) g;
             ANALYZE accounts;"
        ))
        .await?;
    Ok(())
}

/// Four writers and a ticker on the provider, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    writers: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
    ticker: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Load {
    /// Starts the writers (their random streams from `seed`) and the ticker.
    fn start(pair: &Pair, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let dsn = pair.config.provider.to_string();
        let writers = (0..4)
            .map(|i| {
                let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
                writer(dsn.clone(), seed + i, stop, written)
            })
            .collect();
        let ticker = ticker(pair, Arc::clone(&stop));
        Load {
            stop,
            written,
            writers,
            ticker,
        }
    }

    /// Transactions the writers committed so far.
    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops the writers and the ticker; returns how many transactions the writers committed.
    async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut txs = 0;
        for writer in self.writers {
            txs += writer.await??;
        }
        self.ticker.await??;
        Ok(txs)
    }
}

/// A writer: short transactions of random inserts, updates and deletes until `stop`, each
/// counted in `done`.
fn writer(
    dsn: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let client = pgq_core::Dsn::parse(&dsn)?.connect().await?;
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut txs = 0;
        while !stop.load(Ordering::Relaxed) {
            let aid = i32::try_from(next() % 120_000).unwrap_or(0) + 1;
            let sql = match next() % 4 {
                0 => format!("INSERT INTO accounts VALUES ({aid}, 1, 1, 'w') ON CONFLICT DO NOTHING"),
                1 => format!("DELETE FROM accounts WHERE aid = {aid}"),
                _ => format!(
                    "BEGIN; UPDATE accounts SET abalance = abalance + 1 WHERE aid = {aid};
                     UPDATE accounts SET abalance = abalance - 1, filler = 'u' WHERE aid = {}; COMMIT;",
                    aid % 1000 + 1
                ),
            };
            client.batch_execute(&sql).await?;
            txs += 1;
            done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(txs)
    })
}

/// Runs the ticker every 50 ms, as the daemon would, until `stop`.
fn ticker(pair: &Pair, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let dsn = pair.config.provider.clone();
    tokio::spawn(async move {
        let client = dsn.connect().await?;
        let mut period = tokio::time::interval(Duration::from_millis(50));
        while !stop.load(Ordering::Relaxed) {
            period.tick().await;
            client.batch_execute("SELECT pgq.ticker()").await?;
        }
        Ok(())
    })
}

async fn catch_up(pair: &Pair) -> anyhow::Result<()> {
    let deadline = Deadline::after(Duration::from_secs(120));
    loop {
        pair.tick().await?;
        let status = londiste::status(&pair.config).await?;
        let last: Option<i64> = pair
            .provider
            .query_one("SELECT max(tick_id) FROM pgq.tick", &[])
            .await?
            .get(0);
        if status.last_tick.is_some()
            && status.last_tick == last
            && status.tables.iter().all(|t| t.state == TableState::Ok)
        {
            return Ok(());
        }
        deadline
            .pause(format!("the worker to catch up: {status:?}"))
            .await?;
    }
}

#[tokio::test]
async fn a_parallel_copy_under_four_writers_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    accounts(&pair).await?;
    let load = Load::start(&pair, 0x9e37_79b9);
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(Worker::connect(&pair.config).await?.run(cancel.clone()));
    wait_for("the worker to run", Duration::from_secs(10), || async {
        Ok(londiste::status(&pair.config).await?.worker_running)
    })
    .await?;
    let options = AddTableOptions {
        create: true,
        parallel_copy: 2,
        wait: Duration::from_secs(30),
        ..AddTableOptions::default()
    };
    let added = londiste::add_tables(&pair.config, &["accounts".to_owned()], &options).await?;
    assert!(added[0].rows >= 90_000, "{added:?}");
    assert_eq!(added[0].state, TableState::Ok, "{added:?}");
    // The writers go on for a while after the table is ok.
    let at_ok = load.written();
    wait_for(
        "200 more transactions after the copy",
        Duration::from_secs(30),
        || async { Ok(load.written() >= at_ok + 200) },
    )
    .await?;
    let txs = load.stop().await?;
    assert!(txs > 100, "the writers wrote only {txs} transactions");
    catch_up(&pair).await?;
    let compared = londiste::compare(&pair.config, None).await?;
    assert!(
        compared.iter().all(londiste::Comparison::equal),
        "{compared:?}"
    );
    cancel.cancel();
    worker.await??;
    pair.assert_same("accounts", "aid").await?;
    Ok(())
}

/// The end tick of the last batch the worker applied.
async fn last_tick(pair: &Pair) -> anyhow::Result<Option<i64>> {
    Ok(pair
        .subscriber
        .query_one(
            "SELECT max(last_tick) FROM londiste_rs.worker_position",
            &[],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn a_worker_killed_at_random_moments_applies_everything_once() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    accounts(&pair).await?;
    londiste::add_tables(
        &pair.config,
        &["accounts".to_owned()],
        &AddTableOptions {
            create: true,
            ..AddTableOptions::default()
        },
    )
    .await?;
    let dir = TempDir::new("londiste-kill")?;
    let config_file = pair.write_config(&dir, "[worker]\nchunk_size = 500\n")?;
    let seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos(),
    ) | 1;
    println!("kill seed: {seed}");
    let load = Load::start(&pair, seed);
    let mut rng = seed;
    for _ in 0..8 {
        let start = last_tick(&pair).await?;
        let mut worker = Process::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_londiste")).args([
                "--config",
                config_file.to_str().unwrap_or_default(),
                "--log",
                "warn",
                "worker",
            ]),
        )?;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Killed once it has applied 1 to 3 batches, in whatever it does next.
        let batches = 1 + rng % 3;
        let mut seen = start;
        let mut applied = 0;
        let deadline = Deadline::after(Duration::from_secs(30));
        while applied < batches {
            let now = last_tick(&pair).await?;
            if now != seen {
                applied += 1;
                seen = now;
            }
            deadline
                .pause(format!(
                    "{batches} batches of the worker; its log:\n{}",
                    worker.log()
                ))
                .await?;
        }
        worker.kill()?;
    }
    load.stop().await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    drop(worker);
    pair.assert_same("accounts", "aid").await?;
    Ok(())
}
