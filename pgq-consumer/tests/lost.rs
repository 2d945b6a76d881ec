//! A connection lost while the handler is inside a batch is a reconnect, not a failure of the
//! batch: nothing counts towards per-event mode, no event is handed back, and after the
//! reconnect the batch is processed once. The backend is killed with `pg_terminate_backend`
//! from another session while the handler waits inside the batch.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgq_consumer::{
    async_trait, BatchHandle, Consumer, ConsumerConfig, CoopRunner, HandlerError, RemoteRunner,
    Runner,
};
use pgq_core::tokio_postgres::{Client, Transaction};
use pgq_core::{ConsumerName, Dsn, Event, Line};
use pgq_testkit::TestDb;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::common::{
    config, count, create_applied, produce, setup, stop_once_applied, tick, Apply,
};

/// Which connection of the batch the test kills.
#[derive(Clone, Copy)]
enum Side {
    /// The one the handler works on ([`BatchHandle::tx`]).
    Work,
    /// The one the batch is read from ([`BatchHandle::queue_tx`]).
    Queue,
}

/// On its first batch, reports its backend's pid and waits until the test killed it; then,
/// and on every later batch, applies the events (worker `batch`; `event` in per-event mode).
struct Killable {
    side: Side,
    inside: Mutex<Option<(oneshot::Sender<i32>, oneshot::Receiver<()>)>>,
    batch_calls: AtomicU32,
}

#[async_trait]
impl Consumer for Killable {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        let first = self.inside.lock().unwrap().take();
        if let Some((pid, killed)) = first {
            let conn = match self.side {
                Side::Work => batch.tx(),
                Side::Queue => batch.queue_tx(),
            };
            let row = conn
                .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
                .await?;
            pid.send(row.get(0)).map_err(|_| "the test is gone")?;
            killed.await?;
        }
        Apply {
            worker: "batch".to_owned(),
        }
        .process_batch(batch)
        .await
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        Apply {
            worker: "event".to_owned(),
        }
        .process_event(tx, event)
        .await
    }
}

/// The consumer, and the test's ends of its channels.
fn killable(side: Side) -> (Arc<Killable>, oneshot::Receiver<i32>, oneshot::Sender<()>) {
    let (pid_tx, pid_rx) = oneshot::channel();
    let (killed_tx, killed_rx) = oneshot::channel();
    let consumer = Arc::new(Killable {
        side,
        inside: Mutex::new(Some((pid_tx, killed_rx))),
        batch_calls: AtomicU32::new(0),
    });
    (consumer, pid_rx, killed_tx)
}

/// A single failure would switch the batch to per-event mode at once.
fn strict(queue: &pgq_core::QueueName, consumer: &str) -> ConsumerConfig {
    let mut cfg = config(queue, consumer);
    cfg.batch_failures_before_per_event = 1;
    cfg
}

/// Kills the backend the handler reported from `killer`'s session, waits until it is gone,
/// then lets the handler go on.
async fn kill_inside(
    killer: &Client,
    pid: oneshot::Receiver<i32>,
    killed: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let pid = tokio::time::timeout(Duration::from_secs(10), pid).await??;
    let ok: bool = killer
        .query_one("SELECT pg_catalog.pg_terminate_backend($1, 10000)", &[&pid])
        .await?
        .get(0);
    anyhow::ensure!(ok, "backend {pid} did not exit");
    killed
        .send(())
        .map_err(|()| anyhow::anyhow!("the handler is gone"))?;
    Ok(())
}

/// Runs the runner (`run` with the stop's token) through the kill of the backend the handler
/// reports, from `killer`'s session, until `applied` holds the 10 events; then stops it.
async fn run_through_the_kill<F>(
    run: impl FnOnce(CancellationToken) -> F,
    killer: &Client,
    applied: &Client,
    pid: oneshot::Receiver<i32>,
    killed: oneshot::Sender<()>,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = pgq_consumer::Result<()>> + Send + 'static,
{
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(cancel.clone()));
    kill_inside(killer, pid, killed).await?;
    stop_once_applied(applied, 10, cancel, task).await
}

/// What every scenario must show on the database that holds `applied` and on the queue's.
async fn assert_once_without_failure(
    queue_db: &Client,
    applied_db: &Client,
    consumer: &str,
    handler: &Killable,
) -> anyhow::Result<()> {
    assert_eq!(
        count(
            applied_db,
            "SELECT count(*) FROM applied WHERE worker = 'batch'"
        )
        .await?,
        10,
        "every event applied once, in batch mode (a counted failure would mean per-event mode)"
    );
    assert_eq!(
        count(applied_db, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        10
    );
    assert_eq!(
        handler.batch_calls.load(Ordering::SeqCst),
        2,
        "the killed attempt and the one after the reconnect"
    );
    assert_eq!(
        count(queue_db, "SELECT count(*) FROM pgq.retry_queue").await?,
        0
    );
    assert_eq!(
        count(queue_db, "SELECT count(*) FROM pgq.failed_queue").await?,
        0
    );
    let pending: i64 = queue_db
        .query_one(
            "SELECT pending_events FROM pgq.get_consumer_info('q', $1)",
            &[&consumer],
        )
        .await?
        .get(0);
    assert_eq!(pending, 0, "the batch was finished");
    Ok(())
}

#[tokio::test]
async fn local_runner_reconnects_when_its_backend_is_killed_inside_a_batch() -> anyhow::Result<()> {
    let s = setup().await?;
    let (handler, pid, killed) = killable(Side::Work);
    let runner = Runner::connect(&s.dsn, strict(&s.queue, "c"), handler.clone()).await?;
    let metrics = runner.metrics();
    produce(&s.client, 2, 5).await?;
    tick(&s.client).await?;
    run_through_the_kill(|stop| runner.run(stop), &s.client, &s.client, pid, killed).await?;
    assert_once_without_failure(&s.client, &s.client, "c", &handler).await?;
    let snapshot = metrics.snapshot();
    assert_eq!(
        (snapshot.batches, snapshot.retried, snapshot.failed),
        (1, 0, 0)
    );
    Ok(())
}

#[tokio::test]
async fn coop_runner_reconnects_when_its_backend_is_killed_inside_a_batch() -> anyhow::Result<()> {
    let s = setup().await?;
    let (handler, pid, killed) = killable(Side::Work);
    let runner = CoopRunner::connect(
        &s.dsn,
        strict(&s.queue, "group"),
        ConsumerName::new("one")?,
        None,
        handler.clone(),
    )
    .await?;
    produce(&s.client, 2, 5).await?;
    tick(&s.client).await?;
    run_through_the_kill(|stop| runner.run(stop), &s.client, &s.client, pid, killed).await?;
    assert_once_without_failure(&s.client, &s.client, "group", &handler).await?;
    Ok(())
}

/// The remote runner, its target backend killed, then (a second time) its queue backend.
#[tokio::test]
async fn remote_runner_reconnects_when_either_backend_is_killed_inside_a_batch(
) -> anyhow::Result<()> {
    for side in [Side::Work, Side::Queue] {
        let s = setup().await?;
        let target_db = TestDb::new().await?;
        let mut target = target_db.client().await?;
        pgq_core::install(&mut target, &[Line::PgqExt]).await?;
        create_applied(&target).await?;
        let (handler, pid, killed) = killable(side);
        let runner = RemoteRunner::connect(
            &s.dsn,
            &Dsn::parse(&target_db.dsn())?,
            strict(&s.queue, "remote"),
            handler.clone(),
        )
        .await?;
        produce(&s.client, 2, 5).await?;
        tick(&s.client).await?;
        let killer = match side {
            Side::Work => &target,
            Side::Queue => &s.client,
        };
        run_through_the_kill(|stop| runner.run(stop), killer, &target, pid, killed).await?;
        assert_once_without_failure(&s.client, &target, "remote", &handler).await?;
    }
    Ok(())
}
