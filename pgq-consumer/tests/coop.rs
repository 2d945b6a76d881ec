//! Cooperative sub-consumers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgq_consumer::{
    async_trait, run_coop_group, BatchHandle, Consumer, ConsumerError, CoopRunner, HandlerError,
};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Event};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::common::{
    assert_each_transaction_in_one_work_transaction, config, count, produce, register_subconsumers,
    setup, tick, wait_count, Apply,
};

#[tokio::test]
async fn four_subconsumers_process_every_transaction_once_in_one_batch() -> anyhow::Result<()> {
    const TXS: u32 = 2_000;
    const PER_TX: u32 = 100;
    let s = setup().await?;
    register_subconsumers(&s.client, 4).await?;
    for _ in 0..TXS / 20 {
        produce(&s.client, 20, PER_TX).await?;
        tick(&s.client).await?;
    }
    let subs: Vec<ConsumerName> = (1..=4)
        .map(|i| ConsumerName::new(format!("s{i}")))
        .collect::<Result<_, _>>()?;
    let cancel = CancellationToken::new();
    let dsn = s.dsn.clone();
    let cfg = config(&s.queue, "group");
    let group = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            run_coop_group(
                &dsn,
                cfg,
                subs,
                Some(Duration::from_secs(60)),
                Arc::new(Apply::default()),
                cancel,
            )
            .await
        }
    });
    let total = i64::from(TXS * PER_TX);
    wait_count(
        &s.client,
        "SELECT count(*) FROM applied",
        total,
        Duration::from_secs(30),
    )
    .await?;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), group).await???;
    assert_eq!(
        count(&s.client, "SELECT count(*) FROM applied").await?,
        total
    );
    assert_eq!(
        count(&s.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        total
    );
    // Each producer transaction's events were applied by one work transaction.
    assert_each_transaction_in_one_work_transaction(&s.client).await?;
    // Batches ran concurrently: work transactions of different sessions overlapped in time.
    let overlaps = count(
        &s.client,
        "WITH w AS (SELECT work_xid, min(backend) AS backend, min(started) AS t0, max(at) AS t1
                      FROM applied GROUP BY work_xid)
         SELECT count(*) FROM w a JOIN w b ON a.backend < b.backend
          WHERE a.t0 < b.t1 AND b.t0 < a.t1",
    )
    .await?;
    let sessions = count(&s.client, "SELECT count(DISTINCT backend) FROM applied").await?;
    println!("{sessions} sub-consumers processed batches; {overlaps} overlapping pairs");
    assert!(
        sessions >= 2 && overlaps > 0,
        "{sessions} sessions, {overlaps} overlaps"
    );
    // Soft stop unregistered the idle sub-consumers; the group stays.
    assert_eq!(
        count(
            &s.client,
            "SELECT count(*) FROM pgq.consumer WHERE co_name LIKE 'group.%'"
        )
        .await?,
        0
    );
    Ok(())
}

/// Applies events; fails while `fail` is set; waits for `gate` before returning while `hold`
/// is set.
struct Controlled {
    fail: AtomicBool,
    hold: AtomicBool,
    entered: Notify,
    gate: Notify,
}

#[async_trait]
impl Consumer for Controlled {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            for event in &events {
                self.process_event(batch.tx(), event).await?;
            }
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err("failing on purpose".into());
        }
        if self.hold.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.gate.notified().await;
        }
        Ok(())
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        tx.execute("INSERT INTO applied (ev_id) VALUES ($1)", &[&event.id.0])
            .await?;
        Ok(())
    }
}

fn controlled() -> Arc<Controlled> {
    Arc::new(Controlled {
        fail: AtomicBool::new(false),
        hold: AtomicBool::new(false),
        entered: Notify::new(),
        gate: Notify::new(),
    })
}

#[tokio::test]
async fn a_batch_past_dead_interval_is_never_processed_twice() -> anyhow::Result<()> {
    let s = setup().await?;
    let cfg = config(&s.queue, "group");
    let dead = Some(Duration::from_secs(600));
    let a_handler = controlled();
    let mut a = CoopRunner::connect(
        &s.dsn,
        cfg.clone(),
        ConsumerName::new("a")?,
        dead,
        a_handler.clone(),
    )
    .await?;
    let mut b = CoopRunner::connect(
        &s.dsn,
        cfg.clone(),
        ConsumerName::new("b")?,
        dead,
        controlled(),
    )
    .await?;
    produce(&s.client, 2, 5).await?;
    tick(&s.client).await?;

    // 1. A takes the batch and fails: the batch stays open on A, which then goes silent.
    a_handler.fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        a.process_next_batch().await,
        Err(ConsumerError::Handler { .. })
    ));
    let old_batch: i64 = s
        .client
        .query_one(
            "SELECT s.sub_batch FROM pgq.subscription s JOIN pgq.consumer c
                 ON c.co_id = s.sub_consumer WHERE c.co_name = 'group.a'",
            &[],
        )
        .await?
        .get(0);
    s.client
        .batch_execute(
            "UPDATE pgq.subscription s SET sub_active = now() - interval '1 hour'
               FROM pgq.consumer c WHERE c.co_id = s.sub_consumer AND c.co_name = 'group.a'",
        )
        .await?;
    // B takes the silent batch over and processes it.
    let report = b.process_next_batch().await?.expect("the taken-over batch");
    assert_eq!(report.events, 10);
    // A's late finish of its old batch fails with PQS06: its work would roll back.
    let late = s
        .client
        .query_one("SELECT pgq_coop.finish_batch($1)", &[&old_batch])
        .await
        .unwrap_err();
    assert_eq!(late.code().map(|c| c.code()), Some("PQS06"));
    a_handler.fail.store(false, Ordering::SeqCst);
    assert!(a.process_next_batch().await?.is_none());
    assert_eq!(
        count(&s.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        10
    );
    assert_eq!(count(&s.client, "SELECT count(*) FROM applied").await?, 10);

    // 2. A batch running while its sub-consumer looks dead is not taken over: its row is
    // locked by the processing transaction, and the takeover skips locked rows.
    produce(&s.client, 1, 5).await?;
    tick(&s.client).await?;
    a_handler.hold.store(true, Ordering::SeqCst);
    let mut b_fast = CoopRunner::connect(
        &s.dsn,
        cfg,
        ConsumerName::new("c")?,
        Some(Duration::from_micros(1)),
        controlled(),
    )
    .await?;
    let a_task = tokio::spawn(async move { a.process_next_batch().await });
    a_handler.entered.notified().await;
    assert!(b_fast.process_next_batch().await?.is_none());
    a_handler.gate.notify_one();
    let report = a_task.await??.expect("A's batch");
    assert_eq!(report.events, 5);
    assert_eq!(count(&s.client, "SELECT count(*) FROM applied").await?, 15);
    assert_eq!(
        count(&s.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        15
    );
    Ok(())
}
