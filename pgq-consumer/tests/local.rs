//! The local runner: one step at a time, and the loop.

use std::sync::Arc;
use std::time::Duration;

use pgq_consumer::{
    async_trait, BatchHandle, Consumer, ConsumerError, HandlerError, Runner, Typed, TypedConsumer,
};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Event};
use tokio_util::sync::CancellationToken;

use crate::common::{
    config, count, produce, produce_data, setup, stop_once_applied, tick, wait_count, Apply,
};

#[tokio::test]
async fn processes_batches_and_finishes_them() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut runner =
        Runner::connect(&s.dsn, config(&s.queue, "c"), Arc::new(Apply::default())).await?;
    assert!(runner.process_next_batch().await?.is_none());
    produce(&s.client, 3, 4).await?;
    tick(&s.client).await?;
    let report = runner.process_next_batch().await?.expect("a batch");
    assert_eq!(report.events, 12);
    assert!(!report.per_event);
    assert_eq!(
        count(&s.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        12
    );
    assert!(runner.process_next_batch().await?.is_none());
    let info = pgq_core::consumer_info(&s.client, Some(&s.queue), None).await?;
    assert_eq!(info[0].last_tick, Some(report.cur_tick));
    Ok(())
}

#[tokio::test]
async fn second_runner_is_busy_at_once() -> anyhow::Result<()> {
    let s = setup().await?;
    let _first = Runner::connect(&s.dsn, config(&s.queue, "c"), Arc::new(Apply::default())).await?;
    let started = std::time::Instant::now();
    let second = Runner::connect(&s.dsn, config(&s.queue, "c"), Arc::new(Apply::default())).await;
    assert!(
        matches!(second, Err(ConsumerError::ConsumerBusy { .. })),
        "{second:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let other = Runner::connect(
        &s.dsn,
        config(&s.queue, "other"),
        Arc::new(Apply::default()),
    )
    .await;
    assert!(other.is_ok());
    Ok(())
}

#[tokio::test]
async fn unknown_queue_or_consumer_is_a_clear_error() -> anyhow::Result<()> {
    let s = setup().await?;
    let cfg = config(&s.queue, "ghost");
    let mut cfg_noreg = cfg.clone();
    cfg_noreg.register = false;
    let mut runner = Runner::connect(&s.dsn, cfg_noreg, Arc::new(Apply::default())).await?;
    let err = runner.process_next_batch().await.unwrap_err();
    assert!(
        matches!(
            err,
            ConsumerError::Core(pgq_core::Error::ConsumerNotRegistered { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("ghost"), "{err}");
    let mut other = config(&pgq_core::QueueName::new("nope")?, "c");
    other.register = true;
    let err = Runner::connect(&s.dsn, other, Arc::new(Apply::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConsumerError::Core(pgq_core::Error::QueueNotFound { .. })
        ),
        "{err:?}"
    );
    Ok(())
}

/// Fails on events whose data is `poison`.
struct Picky;

#[async_trait]
impl Consumer for Picky {
    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        tx.execute(
            "INSERT INTO applied (ev_id, data) VALUES ($1, $2)",
            &[&event.id.0, &event.ev_data],
        )
        .await?;
        if event.ev_data.as_deref() == Some("poison") {
            return Err("poison event".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn handler_error_rolls_back_then_poison_batch_goes_per_event() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut cfg = config(&s.queue, "c");
    cfg.batch_failures_before_per_event = 2;
    cfg.max_event_retries = 1;
    let mut runner = Runner::connect(&s.dsn, cfg, Arc::new(Picky)).await?;
    produce_data(&s.client, &["a", "b", "poison", "c"]).await?;
    tick(&s.client).await?;
    for _ in 0..2 {
        let err = runner.process_next_batch().await.unwrap_err();
        assert!(matches!(err, ConsumerError::Handler { .. }), "{err:?}");
        assert_eq!(count(&s.client, "SELECT count(*) FROM applied").await?, 0);
    }
    let report = runner.process_next_batch().await?.expect("a batch");
    assert!(report.per_event);
    assert_eq!((report.events, report.retried, report.failed), (4, 1, 0));
    let data: Vec<String> = s
        .client
        .query("SELECT data FROM applied ORDER BY ev_id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(data, ["a", "b", "c"]);
    assert_eq!(
        count(&s.client, "SELECT count(*) FROM pgq.retry_queue").await?,
        1
    );

    // The retried event comes back (ev_retry 1 = the limit) and fails for good.
    s.client
        .batch_execute("UPDATE pgq.retry_queue SET ev_retry_after = now() - interval '1 s'")
        .await?;
    s.client
        .batch_execute("SELECT pgq.maint_retry_events()")
        .await?;
    tick(&s.client).await?;
    for _ in 0..2 {
        runner.process_next_batch().await.unwrap_err();
    }
    let report = runner
        .process_next_batch()
        .await?
        .expect("the retried event");
    assert_eq!((report.events, report.retried, report.failed), (1, 0, 1));
    let consumer = ConsumerName::new("c")?;
    let failed = pgq_consumer::failed_events(&s.client, &s.queue, &consumer).await?;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event.ev_data.as_deref(), Some("poison"));
    assert_eq!(failed[0].reason, "poison event");

    // The operator requeues it, then deletes it once it failed again.
    let id = failed[0].event.id;
    assert!(pgq_consumer::requeue_failed_event(&s.client, &s.queue, &consumer, id).await?);
    assert_eq!(
        pgq_consumer::failed_event_count(&s.client, &s.queue, &consumer).await?,
        0
    );
    assert_eq!(
        count(
            &s.client,
            "SELECT count(*) FROM pgq.retry_queue WHERE ev_retry = 0"
        )
        .await?,
        1
    );
    s.client
        .batch_execute("DELETE FROM pgq.retry_queue")
        .await?;
    assert!(!pgq_consumer::delete_failed_event(&s.client, &s.queue, &consumer, id).await?);
    Ok(())
}

#[derive(serde::Deserialize)]
pub(crate) struct Payload {
    n: i64,
}

pub(crate) struct Sum;

#[async_trait]
impl TypedConsumer for Sum {
    type Payload = Payload;

    async fn process(
        &self,
        tx: &Transaction<'_>,
        event: &Event,
        payload: Payload,
    ) -> Result<(), HandlerError> {
        tx.execute(
            "INSERT INTO applied (ev_id, data) VALUES ($1, $2::int8::text)",
            &[&event.id.0, &payload.n],
        )
        .await?;
        Ok(())
    }
}

#[tokio::test]
async fn malformed_ev_data_goes_to_failed_and_the_rest_proceeds() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut runner = Runner::connect(&s.dsn, config(&s.queue, "c"), Arc::new(Typed(Sum))).await?;
    produce_data(&s.client, &[r#"{"n": 1}"#, "not json", r#"{"n": 3}"#]).await?;
    tick(&s.client).await?;
    let report = runner.process_next_batch().await?.expect("a batch");
    assert_eq!((report.events, report.failed), (3, 1));
    assert_eq!(
        count(&s.client, "SELECT sum(data::int8)::int8 FROM applied").await?,
        4
    );
    let failed = pgq_consumer::failed_events(&s.client, &s.queue, &ConsumerName::new("c")?).await?;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event.ev_data.as_deref(), Some("not json"));
    assert!(
        failed[0].reason.contains("decoding ev_data"),
        "{}",
        failed[0].reason
    );
    Ok(())
}

/// Reads one chunk per call and returns: the receive-with-limit pattern.
struct OneChunk;

#[async_trait]
impl Consumer for OneChunk {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        if let Some(events) = batch.next_chunk().await? {
            let ids: Vec<i64> = events.iter().map(|e| e.id.0).collect();
            batch
                .tx()
                .execute(
                    "INSERT INTO applied (ev_id) SELECT unnest($1::int8[])",
                    &[&ids],
                )
                .await?;
        }
        Ok(())
    }

    async fn process_event(&self, _: &Transaction<'_>, _: &Event) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Reads nothing at all.
struct Lazy;

#[async_trait]
impl Consumer for Lazy {
    async fn process_batch(&self, _: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn process_event(&self, _: &Transaction<'_>, _: &Event) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// One batch of 500,000 events: a handler that returns after each chunk of 500 still gets
/// all of them, once each, before the batch is finished; one that reads nothing is refused.
#[tokio::test]
async fn no_event_of_a_big_batch_is_skipped_silently() -> anyhow::Result<()> {
    const EVENTS: i64 = 500_000;
    let s = setup().await?;
    s.client
        .execute(
            "SELECT count(*) FROM pgq.insert_event_bulk('q', array_fill('t'::text, ARRAY[$1::int]),
                    ARRAY(SELECT g::text FROM generate_series(1, $1::int) g))",
            &[&i32::try_from(EVENTS)?],
        )
        .await?;
    let mut lazy = Runner::connect(&s.dsn, config(&s.queue, "lazy"), Arc::new(Lazy)).await?;
    let mut cfg = config(&s.queue, "chunky");
    cfg.chunk_size = 500;
    let mut chunky = Runner::connect(&s.dsn, cfg, Arc::new(OneChunk)).await?;
    tick(&s.client).await?;
    // Registered before the events' tick: both consumers' first batch holds all of them.
    s.client
        .batch_execute(
            "SELECT pgq.register_consumer_at('q', c, (SELECT min(tick_id) FROM pgq.tick))
               FROM unnest(ARRAY['lazy', 'chunky']) c",
        )
        .await?;
    let err = lazy.process_next_batch().await.unwrap_err();
    assert!(matches!(err, ConsumerError::UnreadEvents { .. }), "{err:?}");
    let report = chunky.process_next_batch().await?.expect("a batch");
    assert_eq!(report.events, u64::try_from(EVENTS)?);
    assert_eq!(
        count(&s.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        EVENTS
    );
    assert_eq!(
        count(&s.client, "SELECT count(*) FROM applied").await?,
        EVENTS
    );
    // The lazy consumer's batch was not finished: it is still at its first tick.
    let lazy_pos = count(
        &s.client,
        "SELECT sub_last_tick FROM pgq.subscription s JOIN pgq.consumer c ON c.co_id = s.sub_consumer
          WHERE c.co_name = 'lazy'",
    )
    .await?;
    assert_eq!(
        lazy_pos,
        count(&s.client, "SELECT min(tick_id) FROM pgq.tick").await?
    );
    Ok(())
}

#[tokio::test]
async fn run_wakes_up_on_ticks_and_stops_softly() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut cfg = config(&s.queue, "c");
    cfg.poll_interval = Duration::from_secs(600);
    let runner = Runner::connect(&s.dsn, cfg, Arc::new(Apply::default())).await?;
    let metrics = runner.metrics();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(runner.run(cancel.clone()));
    for round in 1..=3 {
        produce(&s.client, 2, 5).await?;
        tick(&s.client).await?;
        wait_count(
            &s.client,
            "SELECT count(*) FROM applied",
            round * 10,
            Duration::from_secs(10),
        )
        .await?;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    assert_eq!(
        count(&s.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        30
    );
    let snapshot = metrics.snapshot();
    assert_eq!((snapshot.batches, snapshot.events), (3, 30));
    Ok(())
}

#[tokio::test]
async fn run_reconnects_after_its_connection_is_killed() -> anyhow::Result<()> {
    let s = setup().await?;
    let runner = Runner::connect(&s.dsn, config(&s.queue, "c"), Arc::new(Apply::default())).await?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(runner.run(cancel.clone()));
    let killed = count(
        &s.client,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await?;
    assert_eq!(killed, 1);
    produce(&s.client, 2, 5).await?;
    tick(&s.client).await?;
    stop_once_applied(&s.client, 10, cancel, task).await?;
    assert_eq!(count(&s.client, "SELECT count(*) FROM applied").await?, 10);
    Ok(())
}

/// Never finishes a batch: stuck in a statement on the server.
pub(crate) struct Stuck;

#[async_trait]
impl Consumer for Stuck {
    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        tx.execute("INSERT INTO applied (ev_id) VALUES ($1)", &[&event.id.0])
            .await?;
        tx.execute("SELECT pg_sleep(600)", &[]).await?;
        Ok(())
    }
}

#[tokio::test]
async fn hard_stop_rolls_the_batch_back() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut cfg = config(&s.queue, "c");
    cfg.shutdown_timeout = Duration::from_millis(200);
    let runner = Runner::connect(&s.dsn, cfg, Arc::new(Stuck)).await?;
    produce(&s.client, 1, 3).await?;
    tick(&s.client).await?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(runner.run(cancel.clone()));
    // Wait until the handler is stuck in its statement.
    let stuck = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                    AND query = 'SELECT pg_sleep(600)' AND state = 'active'";
    wait_count(&s.client, stuck, 1, Duration::from_secs(10)).await?;
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await??;
    assert!(
        matches!(result, Err(ConsumerError::HardStopped)),
        "{result:?}"
    );
    // The statement was cancelled and the connection closed with its transaction: nothing
    // was applied.
    let gone = format!("SELECT 1 - ({stuck})");
    wait_count(&s.client, &gone, 1, Duration::from_secs(10)).await?;
    assert_eq!(count(&s.client, "SELECT count(*) FROM applied").await?, 0);
    Ok(())
}
