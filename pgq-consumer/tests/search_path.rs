//! Runner sessions keep the user's `search_path` (handlers run their own SQL there), so every
//! statement the runners send is schema-qualified: with a database owner's look-alikes of
//! built-in functions, operators and types first in the path, the local, cooperative and
//! remote runners resolve none of them (registration, next batch, cursor, retry, failed
//! event, per-event savepoints, finish).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pgq_consumer::{
    async_trait, BatchHandle, Consumer, ConsumerConfig, CoopRunner, HandlerError, RemoteRunner,
    Runner,
};
use pgq_core::tokio_postgres::{Client, Transaction};
use pgq_core::{ConsumerName, Dsn, Event, Line, QueueName, TickId};
use pgq_testkit::{shadow_builtins, shadow_calls, TestDb};

use crate::common::{create_applied, produce_data, setup, tick};

// What migration 0005 does for every function of the lines (pin its search_path), done here
// so that only what the runners' sessions resolve themselves is recorded.
// language=SQL
const PIN_FUNCTIONS: &str = r"
DO $$
DECLARE f pg_catalog.regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('pgq', 'pgq_coop', 'pgq_ext') AND p.prokind = 'f'
           AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) c
                            WHERE c LIKE 'search_path=%')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END $$";

// language=SQL
const APPLY: &str = "\
INSERT INTO public.applied (ev_id, data, worker)
SELECT u.i, u.d, $3
  FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[]))
       AS u(i, d)";

/// Applies with qualified SQL of its own; hands `retry` events back; fails the batch once on
/// `fail` (so that it is processed event by event).
#[derive(Default)]
struct Qualified {
    failed_once: AtomicBool,
}

async fn apply(tx: &Transaction<'_>, events: &[&Event], worker: &str) -> Result<(), HandlerError> {
    let ids: Vec<i64> = events.iter().map(|e| e.id.0).collect();
    let data: Vec<Option<String>> = events.iter().map(|e| e.ev_data.clone()).collect();
    tx.execute(APPLY, &[&ids, &data, &worker]).await?;
    Ok(())
}

#[async_trait]
impl Consumer for Qualified {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            let fail = events.iter().any(|e| e.ev_data.as_deref() == Some("fail"));
            if fail && !self.failed_once.swap(true, Ordering::SeqCst) {
                return Err("failing the batch once".into());
            }
            let mut keep = Vec::new();
            for event in &events {
                if event.ev_data.as_deref() == Some("retry") {
                    batch.retry_event(event, "again").await?;
                } else {
                    keep.push(event);
                }
            }
            apply(batch.tx(), &keep, "batch").await?;
        }
        Ok(())
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        apply(tx, &[event], "event").await
    }
}

/// A database of the lines with its functions pinned, then shadowed by its owner.
async fn shadowed(db: &TestDb, client: &Client) -> anyhow::Result<()> {
    client.batch_execute(PIN_FUNCTIONS).await?;
    shadow_builtins(db).await?;
    Ok(())
}

fn config(queue: &QueueName, consumer: &str) -> pgq_consumer::ConsumerConfigBuilder {
    ConsumerConfig::builder(queue.clone(), ConsumerName::new(consumer).unwrap())
}

#[tokio::test]
async fn runners_resolve_nothing_through_the_users_search_path() -> anyhow::Result<()> {
    let s = setup().await?;
    let target_db = TestDb::new().await?;
    let mut target = target_db.client().await?;
    pgq_core::install(&mut target, &[Line::PgqExt]).await?;
    create_applied(&target).await?;
    let last_tick: i64 = s
        .client
        .query_one("SELECT max(tick_id) FROM pgq.tick", &[])
        .await?
        .get(0);
    shadowed(&s.db, &s.client).await?;
    shadowed(&target_db, &target).await?;

    let handler = Arc::new(Qualified::default());
    let mut local = Runner::connect(
        &s.dsn,
        config(&s.queue, "local")
            .register_at(TickId(last_tick))
            .batch_failures_before_per_event(1)
            .build(),
        handler.clone(),
    )
    .await?;
    let mut coop = CoopRunner::connect(
        &s.dsn,
        config(&s.queue, "group").max_event_retries(0).build(),
        ConsumerName::new("one")?,
        Some(std::time::Duration::from_secs(60)),
        handler.clone(),
    )
    .await?;
    let mut remote = RemoteRunner::connect(
        &s.dsn,
        &Dsn::parse(&target_db.dsn())?,
        config(&s.queue, "remote").build(),
        handler.clone(),
    )
    .await?;
    produce_data(&s.client, &["one", "retry", "fail", "two"]).await?;
    tick(&s.client).await?;

    let err = local.process_next_batch().await.expect_err("fails once");
    assert!(
        matches!(err, pgq_consumer::ConsumerError::Handler { .. }),
        "{err:?}"
    );
    let report = local.process_next_batch().await?.expect("a batch");
    assert!(report.per_event, "after one failure, event by event");
    assert_eq!(report.events, 4);
    let report = coop.process_next_batch().await?.expect("a batch");
    assert_eq!((report.events, report.failed), (4, 1));
    let report = remote.process_next_batch().await?.expect("a batch");
    assert_eq!((report.events, report.retried), (4, 1));

    assert_eq!(shadow_calls(&s.client).await?, Vec::<String>::new());
    assert_eq!(shadow_calls(&target).await?, Vec::<String>::new());
    let applied: i64 = s
        .client
        .query_one("SELECT count(*) FROM applied", &[])
        .await?
        .get(0);
    assert_eq!(
        applied,
        4 + 3,
        "local: every event one by one; coop: all but the failed"
    );

    // The trap is armed: the same look-alikes catch an unqualified statement in that session.
    let user = Dsn::parse(&s.db.dsn())?.connect().await?;
    user.batch_execute("SELECT now()").await?;
    assert_eq!(shadow_calls(&s.client).await?, ["now()"]);
    Ok(())
}
