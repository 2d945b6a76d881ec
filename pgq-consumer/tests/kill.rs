//! Exactly-once under SIGKILL: runners run in child processes (this test binary, re-run with
//! only `kill::child` selected) that apply events into a table; they are killed at random
//! moments and restarted, and every event must be applied exactly once. For a local consumer,
//! a cooperative group of 4 sub-consumer processes, and a remote consumer; and for two remote
//! workers of one consumer, whose queue connections are killed in turn while the other one
//! stands by.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgq_consumer::{
    async_trait, BatchHandle, Consumer, CoopRunner, HandlerError, RemoteRunner, Runner,
};
use pgq_core::tokio_postgres::{Client, Transaction};
use pgq_core::{ConsumerName, Dsn, Event, Line};
use pgq_testkit::TestDb;
use tokio_util::sync::CancellationToken;

use crate::common::{
    apply_chunk, assert_each_transaction_in_one_work_transaction, config, count, create_applied,
    produce, register_subconsumers, setup, tick, until_free, wait_count, Apply,
};

const CHILD_MODE: &str = "PGQ_CONSUMER_KILL_CHILD";
const CHILD_DSN: &str = "PGQ_CONSUMER_KILL_DSN";
const CHILD_TARGET: &str = "PGQ_CONSUMER_KILL_TARGET";
const CHILD_SUB: &str = "PGQ_CONSUMER_KILL_SUB";
const CHILD_PAUSE_MS: &str = "PGQ_CONSUMER_KILL_PAUSE_MS";

/// Applies a batch, then holds its transaction open on the server for a while, so that most
/// kills land inside an open batch and every kill finds work left.
struct Slow {
    apply: Apply,
    pause_s: f64,
}

impl Slow {
    fn from_env() -> anyhow::Result<Arc<Slow>> {
        let pause_ms: u32 = std::env::var(CHILD_PAUSE_MS)?.parse()?;
        Ok(Arc::new(Slow {
            apply: Apply::default(),
            pause_s: f64::from(pause_ms) / 1000.0,
        }))
    }
}

#[async_trait]
impl Consumer for Slow {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        self.apply.process_batch(batch).await?;
        batch
            .tx()
            .execute("SELECT pg_sleep($1)", &[&self.pause_s])
            .await?;
        Ok(())
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        self.apply.process_event(tx, event).await
    }
}

/// The child: runs a consumer until killed. Does nothing unless started by a kill test.
#[tokio::test]
#[ignore = "the child process of the kill tests"]
async fn child() -> anyhow::Result<()> {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return Ok(());
    };
    let dsn = Dsn::parse(&std::env::var(CHILD_DSN)?)?;
    let queue = pgq_core::QueueName::new(crate::common::QUEUE)?;
    let cancel = CancellationToken::new();
    let consumer = Slow::from_env()?;
    match mode.as_str() {
        "local" => {
            let runner =
                until_free(|| Runner::connect(&dsn, config(&queue, "killed"), consumer.clone()))
                    .await?;
            runner.run(cancel).await?;
        }
        "coop" => {
            let sub = ConsumerName::new(std::env::var(CHILD_SUB)?)?;
            let runner = until_free(|| {
                CoopRunner::connect(
                    &dsn,
                    config(&queue, "group"),
                    sub.clone(),
                    Some(Duration::from_millis(500)),
                    consumer.clone(),
                )
            })
            .await?;
            runner.run(cancel).await?;
        }
        "remote" => {
            let target = Dsn::parse(&std::env::var(CHILD_TARGET)?)?;
            let runner = until_free(|| {
                RemoteRunner::connect(&dsn, &target, config(&queue, "killed"), consumer.clone())
            })
            .await?;
            runner.run(cancel).await?;
        }
        other => anyhow::bail!("unknown child mode {other}"),
    }
    Ok(())
}

/// xorshift64*: a reproducible sequence from the printed seed.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("PGQ_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
                    | 1
            });
        println!("{test}: seed {seed} (replay with PGQ_KILL_SEED={seed})");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Starts the child with `vars` and kills it 30 to 150 ms later, `KILLS` times over.
async fn kill_repeatedly(vars: &[(&str, &str)], rng: &mut Rng) -> anyhow::Result<()> {
    for _ in 0..KILLS {
        let mut child = spawn_child(vars)?;
        tokio::time::sleep(Duration::from_millis(30 + rng.below(120))).await;
        child.kill().await?;
    }
    Ok(())
}

fn spawn_child(vars: &[(&str, &str)]) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "--exact",
        "kill::child",
        "--ignored",
        "--test-threads=1",
        "--quiet",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Ok(cmd.spawn()?)
}

const KILLS: u32 = 50;
const TXS: u32 = 300;
const PER_TX: u32 = 20;
const TOTAL: i64 = 6_000;
/// How long a local or remote child holds each batch open: 300 batches take it at least 7.5 s,
/// more than 50 kills at 30-150 ms.
const PAUSE_MS: &str = "25";
/// The same for each of the 4 cooperative children, killed every 20-100 ms.
const COOP_PAUSE_MS: &str = "100";

/// Events in many small batches (`txs` of `PER_TX` events): one transaction per tick.
async fn fill(client: &Client, txs: u32) -> anyhow::Result<()> {
    for _ in 0..txs {
        produce(client, 1, PER_TX).await?;
        tick(client).await?;
    }
    Ok(())
}

/// Checks that the last kill still found work left, so that no kill was wasted on an idle
/// consumer.
async fn assert_work_left(client: &Client, seed_note: &str, total: i64) -> anyhow::Result<()> {
    let applied = count(client, "SELECT count(DISTINCT ev_id) FROM applied").await?;
    println!("{seed_note}: {applied} of {total} events applied after {KILLS} kills");
    assert!(
        applied < total,
        "{seed_note}: the kills came after the work was done"
    );
    Ok(())
}

/// Waits up to 30 s until `applied` holds `total` distinct events.
async fn wait_all_applied(client: &Client, total: i64) -> anyhow::Result<()> {
    wait_count(
        client,
        "SELECT count(DISTINCT ev_id) FROM applied",
        total,
        Duration::from_secs(30),
    )
    .await
}

async fn assert_once(client: &Client, seed_note: &str, total: i64) -> anyhow::Result<()> {
    assert_eq!(
        count(client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        total,
        "{seed_note}"
    );
    assert_eq!(
        count(client, "SELECT count(*) FROM applied").await?,
        total,
        "{seed_note}"
    );
    Ok(())
}

#[tokio::test]
async fn local_consumer_exactly_once_under_sigkill() -> anyhow::Result<()> {
    let mut rng = Rng::new("local kill test");
    let s = setup().await?;
    pgq_core::register_consumer(&s.client, &s.queue, &ConsumerName::new("killed")?).await?;
    fill(&s.client, TXS).await?;
    let dsn = s.db.dsn();
    let vars = [
        (CHILD_MODE, "local"),
        (CHILD_DSN, dsn.as_str()),
        (CHILD_PAUSE_MS, PAUSE_MS),
    ];
    kill_repeatedly(&vars, &mut rng).await?;
    assert_work_left(&s.client, "local", TOTAL).await?;
    let mut child = spawn_child(&vars)?;
    let done = wait_all_applied(&s.client, TOTAL).await;
    child.kill().await?;
    done?;
    assert_once(&s.client, "local", TOTAL).await
}

#[tokio::test]
async fn coop_group_exactly_once_under_sigkill_and_takeover() -> anyhow::Result<()> {
    let mut rng = Rng::new("coop kill test");
    let s = setup().await?;
    register_subconsumers(&s.client, 4).await?;
    fill(&s.client, TXS).await?;
    let dsn = s.db.dsn();
    let subs = ["s1", "s2", "s3", "s4"];
    let spawn = |sub: &str| {
        spawn_child(&[
            (CHILD_MODE, "coop"),
            (CHILD_DSN, dsn.as_str()),
            (CHILD_SUB, sub),
            (CHILD_PAUSE_MS, COOP_PAUSE_MS),
        ])
    };
    let mut children = subs
        .iter()
        .map(|sub| spawn(sub))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
        let i = usize::try_from(rng.below(4))?;
        children[i].kill().await?;
        children[i] = spawn(subs[i])?;
    }
    assert_work_left(&s.client, "coop", TOTAL).await?;
    // s4 dies for good, maybe with a batch open: the others take it over after dead_interval.
    children[3].kill().await?;
    let done = wait_all_applied(&s.client, TOTAL).await;
    for child in &mut children[..3] {
        child.kill().await?;
    }
    done?;
    assert_once(&s.client, "coop", TOTAL).await?;
    assert_each_transaction_in_one_work_transaction(&s.client).await?;
    Ok(())
}

#[tokio::test]
async fn remote_consumer_exactly_once_under_sigkill() -> anyhow::Result<()> {
    let mut rng = Rng::new("remote kill test");
    let s = setup().await?;
    let target_db = TestDb::new().await?;
    let mut target = target_db.client().await?;
    pgq_core::install(&mut target, &[Line::PgqExt]).await?;
    create_applied(&target).await?;
    pgq_core::register_consumer(&s.client, &s.queue, &ConsumerName::new("killed")?).await?;
    fill(&s.client, TXS).await?;
    let (dsn, target_dsn) = (s.db.dsn(), target_db.dsn());
    let vars = [
        (CHILD_MODE, "remote"),
        (CHILD_DSN, dsn.as_str()),
        (CHILD_TARGET, target_dsn.as_str()),
        (CHILD_PAUSE_MS, PAUSE_MS),
    ];
    kill_repeatedly(&vars, &mut rng).await?;
    assert_work_left(&target, "remote", TOTAL).await?;
    let mut child = spawn_child(&vars)?;
    let done = wait_all_applied(&target, TOTAL).await;
    child.kill().await?;
    done?;
    assert_once(&target, "remote", TOTAL).await
}

/// Batches of the two-worker test: 100 of 20 events, each held open for at least 70 ms.
const TAKEOVER_TXS: u32 = 100;
const TAKEOVER_TOTAL: i64 = 2_000;

/// Applies each chunk (of 10), then holds the work transaction open on the server for 5 ms;
/// after the last one, for 60 ms, longer than the other worker takes to take the batch over.
/// A kill during a pause after a chunk makes the next read fail (the work rolls back); a kill
/// during the last pause comes after the reads: the work commits on the target and only
/// finishing the batch fails, while the other worker has the batch and must find it done.
struct Stepwise {
    worker: String,
}

async fn pause(tx: &Transaction<'_>, seconds: f64) -> Result<(), HandlerError> {
    tx.execute("SELECT pg_sleep($1)", &[&seconds]).await?;
    Ok(())
}

#[async_trait]
impl Consumer for Stepwise {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            apply_chunk(batch.tx(), &self.worker, &events).await?;
            pause(batch.tx(), 0.005).await?;
        }
        pause(batch.tx(), 0.06).await
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        apply_chunk(tx, &self.worker, std::slice::from_ref(event)).await
    }
}

/// A remote worker of consumer `killed` that waits for the consumer's lock, then runs until
/// `cancel` fires (reconnecting, and waiting for the lock again, after each kill).
async fn standby_worker(
    dsn: Dsn,
    target: Dsn,
    worker: &str,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let queue = pgq_core::QueueName::new(crate::common::QUEUE)?;
    let mut cfg = config(&queue, "killed");
    cfg.chunk_size = PER_TX / 2;
    let consumer = Arc::new(Stepwise {
        worker: worker.to_owned(),
    });
    let runner = tokio::select! {
        runner = until_free(|| RemoteRunner::connect(&dsn, &target, cfg.clone(), consumer.clone())) => runner?,
        () = cancel.cancelled() => return Ok(()),
    };
    Ok(runner.run(cancel).await?)
}

// language=SQL
const KILL_LOCK_HOLDER: &str = "\
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
  FROM pg_locks
 WHERE locktype = 'advisory' AND granted
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

#[tokio::test]
async fn two_remote_workers_exactly_once_when_the_active_ones_queue_connection_is_killed(
) -> anyhow::Result<()> {
    let mut rng = Rng::new("remote takeover test");
    let s = setup().await?;
    let t = crate::remote::target().await?;
    let target = &t.client;
    pgq_core::register_consumer(&s.client, &s.queue, &ConsumerName::new("killed")?).await?;
    fill(&s.client, TAKEOVER_TXS).await?;
    let cancel = CancellationToken::new();
    let workers = ["a", "b"].map(|w| {
        tokio::spawn(standby_worker(
            s.dsn.clone(),
            t.dsn.clone(),
            w,
            cancel.clone(),
        ))
    });
    let mut hits = 0;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(30 + rng.below(120))).await;
        hits += count(&s.client, KILL_LOCK_HOLDER).await?;
    }
    assert_work_left(target, "remote takeover", TAKEOVER_TOTAL).await?;
    let done = wait_all_applied(target, TAKEOVER_TOTAL).await;
    cancel.cancel();
    for worker in workers {
        worker.await??;
    }
    done?;
    let by_worker = target
        .query(
            "SELECT worker, count(DISTINCT ev_txid) FROM applied GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| format!("{}: {} batches", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    println!("remote takeover: {hits} of {KILLS} kills hit a worker; {by_worker:?}");
    assert!(
        hits >= i64::from(KILLS / 2),
        "only {hits} kills found a worker"
    );
    assert_eq!(by_worker.len(), 2, "both workers applied batches");
    assert_once(target, "remote takeover", TAKEOVER_TOTAL).await
}
