//! Exactly-once under SIGKILL: runners run in child processes (this test binary, re-run with
//! only `kill::child` selected) that apply events into a table; they are killed at random
//! moments and restarted, and every event must be applied exactly once. For a local consumer,
//! a cooperative group of 4 sub-consumer processes, and a remote consumer.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgq_consumer::{
    async_trait, BatchHandle, Consumer, ConsumerError, CoopRunner, HandlerError, RemoteRunner,
    Runner,
};
use pgq_core::tokio_postgres::{Client, Transaction};
use pgq_core::{ConsumerName, Dsn, Event, Line};
use pgq_testkit::TestDb;
use tokio_util::sync::CancellationToken;

use crate::common::{config, count, create_applied, produce, setup, tick, wait_count, Apply};

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

/// Retries while a killed predecessor's session still holds the lock.
async fn until_free<T, F, Fut>(mut connect: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = pgq_consumer::Result<T>>,
{
    loop {
        match connect().await {
            Err(ConsumerError::ConsumerBusy { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return Ok(other?),
        }
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

/// Events in many small batches: one transaction per tick.
async fn fill(client: &Client) -> anyhow::Result<()> {
    for _ in 0..TXS {
        produce(client, 1, PER_TX).await?;
        tick(client).await?;
    }
    Ok(())
}

/// Checks that the last kill still found work left, so that no kill was wasted on an idle
/// consumer.
async fn assert_work_left(client: &Client, seed_note: &str) -> anyhow::Result<()> {
    let applied = count(client, "SELECT count(DISTINCT ev_id) FROM applied").await?;
    println!("{seed_note}: {applied} of {TOTAL} events applied after {KILLS} kills");
    assert!(
        applied < TOTAL,
        "{seed_note}: the kills came after the work was done"
    );
    Ok(())
}

async fn assert_once(client: &Client, seed_note: &str) -> anyhow::Result<()> {
    assert_eq!(
        count(client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        TOTAL,
        "{seed_note}"
    );
    assert_eq!(
        count(client, "SELECT count(*) FROM applied").await?,
        TOTAL,
        "{seed_note}"
    );
    Ok(())
}

#[tokio::test]
async fn local_consumer_exactly_once_under_sigkill() -> anyhow::Result<()> {
    let mut rng = Rng::new("local kill test");
    let s = setup().await?;
    pgq_core::register_consumer(&s.client, &s.queue, &ConsumerName::new("killed")?).await?;
    fill(&s.client).await?;
    let dsn = s.db.dsn();
    let vars = [
        (CHILD_MODE, "local"),
        (CHILD_DSN, dsn.as_str()),
        (CHILD_PAUSE_MS, PAUSE_MS),
    ];
    for _ in 0..KILLS {
        let mut child = spawn_child(&vars)?;
        tokio::time::sleep(Duration::from_millis(30 + rng.below(120))).await;
        child.kill().await?;
    }
    assert_work_left(&s.client, "local").await?;
    let mut child = spawn_child(&vars)?;
    let done = wait_count(
        &s.client,
        "SELECT count(DISTINCT ev_id) FROM applied",
        TOTAL,
        Duration::from_secs(30),
    )
    .await;
    child.kill().await?;
    done?;
    assert_once(&s.client, "local").await
}

#[tokio::test]
async fn coop_group_exactly_once_under_sigkill_and_takeover() -> anyhow::Result<()> {
    let mut rng = Rng::new("coop kill test");
    let s = setup().await?;
    s.client
        .batch_execute(
            "SELECT pgq_coop.register_subconsumer('q', 'group', 's' || i)
               FROM generate_series(1, 4) i",
        )
        .await?;
    fill(&s.client).await?;
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
    assert_work_left(&s.client, "coop").await?;
    // s4 dies for good, maybe with a batch open: the others take it over after dead_interval.
    children[3].kill().await?;
    let done = wait_count(
        &s.client,
        "SELECT count(DISTINCT ev_id) FROM applied",
        TOTAL,
        Duration::from_secs(30),
    )
    .await;
    for child in &mut children[..3] {
        child.kill().await?;
    }
    done?;
    assert_once(&s.client, "coop").await?;
    assert_eq!(
        count(
            &s.client,
            "SELECT count(*) FROM (SELECT ev_txid FROM applied GROUP BY ev_txid
                                   HAVING count(DISTINCT work_xid) > 1) x"
        )
        .await?,
        0
    );
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
    fill(&s.client).await?;
    let (dsn, target_dsn) = (s.db.dsn(), target_db.dsn());
    let vars = [
        (CHILD_MODE, "remote"),
        (CHILD_DSN, dsn.as_str()),
        (CHILD_TARGET, target_dsn.as_str()),
        (CHILD_PAUSE_MS, PAUSE_MS),
    ];
    for _ in 0..KILLS {
        let mut child = spawn_child(&vars)?;
        tokio::time::sleep(Duration::from_millis(30 + rng.below(120))).await;
        child.kill().await?;
    }
    assert_work_left(&target, "remote").await?;
    let mut child = spawn_child(&vars)?;
    let done = wait_count(
        &target,
        "SELECT count(DISTINCT ev_id) FROM applied",
        TOTAL,
        Duration::from_secs(30),
    )
    .await;
    child.kill().await?;
    done?;
    assert_once(&target, "remote").await
}
