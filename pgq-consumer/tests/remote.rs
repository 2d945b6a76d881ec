//! The remote runner: work and batch id in the target database, finish afterwards; the tracking
//! keyed by (the queue database's installation id, queue, consumer) and locked before the check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pgq_consumer::{async_trait, BatchHandle, Consumer, ConsumerError, HandlerError, RemoteRunner};
use pgq_core::tokio_postgres::{Client, Transaction};
use pgq_core::{Dsn, Event, Line, QueueName};
use pgq_testkit::TestDb;
use tokio::sync::{mpsc, Notify};

use crate::common::{
    apply_chunk, config, count, create_applied, produce, setup, tick, until_free, wait_count, Apply,
};

/// A target database with the `pgq_ext` line and the `applied` table.
pub(crate) struct Target {
    _db: TestDb,
    pub(crate) client: Client,
    pub(crate) dsn: Dsn,
}

pub(crate) async fn target() -> anyhow::Result<Target> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::PgqExt]).await?;
    create_applied(&client).await?;
    let dsn = Dsn::parse(&db.dsn())?;
    Ok(Target {
        _db: db,
        client,
        dsn,
    })
}

fn apply_as(worker: &str) -> Arc<Apply> {
    Arc::new(Apply {
        worker: worker.to_owned(),
    })
}

/// `(worker, rows, distinct events)` of `applied`, per worker.
async fn applied_by_worker(client: &Client) -> anyhow::Result<Vec<(String, i64, i64)>> {
    Ok(client
        .query(
            "SELECT worker, count(*), count(DISTINCT ev_id) FROM applied GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// `(provider id, queue, consumer, last batch)` rows of the tracking table.
async fn tracking(client: &Client) -> anyhow::Result<Vec<(String, String, String, Option<i64>)>> {
    Ok(client
        .query(
            "SELECT provider_id::text, queue_name, consumer_name, last_batch_id
               FROM pgq_ext.batch_tracking ORDER BY 1, 2, 3",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

#[tokio::test]
async fn remote_batches_apply_once_and_done_batches_are_only_finished() -> anyhow::Result<()> {
    let s = setup().await?;
    let t = target().await?;
    let provider_id = pgq_core::installation_id(&s.client).await?;
    let mut runner = RemoteRunner::connect(
        &s.dsn,
        &t.dsn,
        config(&s.queue, "remote"),
        Arc::new(Apply::default()),
    )
    .await?;
    produce(&s.client, 2, 5).await?;
    tick(&s.client).await?;
    let report = runner.process_next_batch().await?.expect("a batch");
    assert_eq!(report.events, 10);
    assert!(!report.already_done);
    assert_eq!(
        count(&t.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        10
    );
    assert_eq!(
        tracking(&t.client).await?,
        [(
            provider_id.to_string(),
            "q".to_owned(),
            "remote".to_owned(),
            Some(report.batch_id.0)
        )]
    );

    // A crash after the target's commit: the batch is recorded there, open in the queue.
    produce(&s.client, 1, 5).await?;
    tick(&s.client).await?;
    let consumer = pgq_core::ConsumerName::new("remote")?;
    let batch = pgq_core::next_batch(&s.client, &s.queue, &consumer)
        .await?
        .expect("a batch");
    t.client
        .execute(
            "SELECT pgq_ext.set_batch_done($1::text::uuid, 'q', 'remote', $2)",
            &[&provider_id.as_str(), &batch.id.0],
        )
        .await?;
    let report = runner.process_next_batch().await?.expect("the open batch");
    assert_eq!(report.batch_id, batch.id);
    assert!(report.already_done);
    assert_eq!(count(&t.client, "SELECT count(*) FROM applied").await?, 10);
    assert!(runner.process_next_batch().await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_target_without_the_current_pgq_ext_is_refused() -> anyhow::Result<()> {
    let s = setup().await?;
    let bare = TestDb::new().await?;
    let err = RemoteRunner::connect(
        &s.dsn,
        &Dsn::parse(&bare.dsn())?,
        config(&s.queue, "c"),
        Arc::new(Apply::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "schema line pgq_ext is at version None, this build needs 2"
    );
    Ok(())
}

/// Reads its whole batch, tells `reached` the backend of its queue connection, and waits for
/// `release` before applying.
struct Paused {
    reached: mpsc::UnboundedSender<i32>,
    release: Notify,
}

#[async_trait]
impl Consumer for Paused {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        let pid: i32 = batch
            .queue_tx()
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let mut events = Vec::new();
        while let Some(chunk) = batch.next_chunk().await? {
            events.extend(chunk);
        }
        self.reached.send(pid)?;
        self.release.notified().await;
        apply_chunk(batch.tx(), "a", &events).await
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        apply_chunk(tx, "a", std::slice::from_ref(event)).await
    }
}

#[tokio::test]
async fn a_standby_waits_for_the_stale_worker_and_a_stale_claim_is_refused() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut t = target().await?;
    let provider_id = pgq_core::installation_id(&s.client).await?;
    let (reached_tx, mut reached) = mpsc::unbounded_channel();
    let a_handler = Arc::new(Paused {
        reached: reached_tx,
        release: Notify::new(),
    });
    let mut a =
        RemoteRunner::connect(&s.dsn, &t.dsn, config(&s.queue, "c"), a_handler.clone()).await?;
    produce(&s.client, 1, 5).await?;
    tick(&s.client).await?;
    produce(&s.client, 1, 5).await?;
    tick(&s.client).await?;

    // A takes batch N and pauses in its handler, before applying, holding the tracking row;
    // then its queue connection drops and B, the standby, takes N over.
    let a_task = tokio::spawn(async move { a.process_next_batch().await });
    let a_pid = reached
        .recv()
        .await
        .context("A never reached its handler")?;
    s.client
        .execute("SELECT pg_terminate_backend($1)", &[&a_pid])
        .await?;
    let mut b =
        until_free(|| RemoteRunner::connect(&s.dsn, &t.dsn, config(&s.queue, "c"), apply_as("b")))
            .await?;
    let b_task = tokio::spawn(async move {
        let first = b.process_next_batch().await;
        (b, first)
    });
    wait_count(
        &t.client,
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'
            AND query LIKE '%is_batch_done_for_update%'",
        1,
        Duration::from_secs(10),
    )
    .await
    .context("B does not wait for A's tracking lock")?;
    assert_eq!(count(&t.client, "SELECT count(*) FROM applied").await?, 0);

    // A resumes: it applies N and records it; finishing N in the queue fails (no connection).
    a_handler.release.notify_one();
    let a_err = a_task.await?.expect_err("A's queue connection is gone");
    assert!(a_err.is_connection_lost(), "{a_err}");
    // B finds N done and only finishes it; then applies N+1.
    let (mut b, first) = b_task.await?;
    let first = first?.expect("batch N");
    assert!(first.already_done);
    let second = b.process_next_batch().await?.expect("batch N+1");
    assert!(!second.already_done);
    assert!(second.batch_id > first.batch_id);
    assert!(b.process_next_batch().await?.is_none());
    assert_eq!(
        applied_by_worker(&t.client).await?,
        [("a".to_owned(), 5, 5), ("b".to_owned(), 5, 5)]
    );

    // A worker that took N before B applied N and N+1, and locks only now: N is done (its id is
    // below the last one recorded), and recording it again is refused.
    let n = first.batch_id.0;
    let stale = t.client.transaction().await?;
    let done: bool = stale
        .query_one(
            "SELECT pgq_ext.is_batch_done_for_update($1::text::uuid, 'q', 'c', $2)",
            &[&provider_id.as_str(), &n],
        )
        .await?
        .get(0);
    assert!(
        done,
        "batch {n} must count as done after {}",
        second.batch_id
    );
    let err = stale
        .query_one(
            "SELECT pgq_ext.set_batch_done($1::text::uuid, 'q', 'c', $2)",
            &[&provider_id.as_str(), &n],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().context("a server error")?;
    assert_eq!(db.code().code(), "PQX01");
    assert_eq!(
        db.message(),
        format!("pgq_ext: batch {n} of queue q is done already for consumer c")
    );
    Ok(())
}

/// Applies; when `record_first` is set, records the batch as done itself first, as another
/// worker would have, had it not waited for the lock.
struct RecordsFirst {
    provider_id: String,
    record_first: AtomicBool,
}

#[async_trait]
impl Consumer for RecordsFirst {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        if self.record_first.load(Ordering::SeqCst) {
            batch
                .tx()
                .execute(
                    "SELECT pgq_ext.set_batch_done($1::text::uuid, 'q', 'c', $2)",
                    &[&self.provider_id, &batch.id().0],
                )
                .await?;
        }
        while let Some(events) = batch.next_chunk().await? {
            apply_chunk(batch.tx(), "", &events).await?;
        }
        Ok(())
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        apply_chunk(tx, "", std::slice::from_ref(event)).await
    }
}

#[tokio::test]
async fn a_refused_set_done_aborts_the_batch() -> anyhow::Result<()> {
    let s = setup().await?;
    let t = target().await?;
    let handler = Arc::new(RecordsFirst {
        provider_id: pgq_core::installation_id(&s.client).await?.to_string(),
        record_first: AtomicBool::new(true),
    });
    let mut runner =
        RemoteRunner::connect(&s.dsn, &t.dsn, config(&s.queue, "c"), handler.clone()).await?;
    produce(&s.client, 1, 5).await?;
    tick(&s.client).await?;

    let err = runner.process_next_batch().await.unwrap_err();
    let ConsumerError::BatchDoneElsewhere { batch_id } = err else {
        panic!("expected BatchDoneElsewhere, got {err:?}");
    };
    assert_eq!(
        err.to_string(),
        format!(
            "batch {batch_id} was recorded as done on the target by another worker; this \
             worker's work was rolled back"
        )
    );
    // Nothing of it on the target; the batch still open in the queue.
    assert_eq!(count(&t.client, "SELECT count(*) FROM applied").await?, 0);
    assert!(tracking(&t.client).await?.is_empty());
    let open: Option<i64> = s
        .client
        .query_one(
            "SELECT current_batch FROM pgq.get_consumer_info('q', 'c')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(open, Some(batch_id.0));

    handler.record_first.store(false, Ordering::SeqCst);
    let report = runner.process_next_batch().await?.expect("the same batch");
    assert_eq!((report.batch_id, report.events), (batch_id, 5));
    assert!(!report.already_done);
    assert_eq!(
        count(&t.client, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        5
    );
    assert_eq!(count(&t.client, "SELECT count(*) FROM applied").await?, 5);
    Ok(())
}

/// Inserts `n` events into `queue` in one transaction and ticks it.
async fn produce_into(client: &Client, queue: &str, n: i32) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT count(pgq.insert_event($1, 't', g::text)) FROM generate_series(1, $2) g",
            &[&queue, &n],
        )
        .await?;
    client
        .execute("SELECT pgq.force_tick($1)", &[&queue])
        .await?;
    client.execute("SELECT pgq.ticker($1)", &[&queue]).await?;
    Ok(())
}

/// Makes the database's next batch id `id`.
async fn next_batch_id(client: &Client, id: i64) -> anyhow::Result<()> {
    client
        .execute("SELECT setval('pgq.batch_id_seq', $1, false)", &[&id])
        .await?;
    Ok(())
}

#[tokio::test]
async fn one_consumer_name_on_two_queues_and_two_providers_is_tracked_apart() -> anyhow::Result<()>
{
    let s = setup().await?;
    let q2 = QueueName::new("q2")?;
    pgq_core::create_queue(&s.client, &q2).await?;
    let other_db = TestDb::new().await?;
    let mut other = other_db.client().await?;
    pgq_core::install(&mut other, &[Line::Pgq]).await?;
    pgq_core::create_queue(&other, &s.queue).await?;
    let other_dsn = Dsn::parse(&other_db.dsn())?;
    let t = target().await?;
    let (p1, p2) = (
        pgq_core::installation_id(&s.client).await?.to_string(),
        pgq_core::installation_id(&other).await?.to_string(),
    );
    assert_ne!(p1, p2);

    let mut on_q =
        RemoteRunner::connect(&s.dsn, &t.dsn, config(&s.queue, "c"), apply_as("q")).await?;
    let mut on_q2 = RemoteRunner::connect(&s.dsn, &t.dsn, config(&q2, "c"), apply_as("q2")).await?;
    let mut on_other =
        RemoteRunner::connect(&other_dsn, &t.dsn, config(&s.queue, "c"), apply_as("other")).await?;

    produce_into(&s.client, "q", 3).await?;
    let first = on_q.process_next_batch().await?.expect("a batch of q");
    // The same batch id for q2 and for q on the other provider.
    let id = first.batch_id;
    next_batch_id(&s.client, id.0).await?;
    produce_into(&s.client, "q2", 4).await?;
    let second = on_q2.process_next_batch().await?.expect("a batch of q2");
    next_batch_id(&other, id.0).await?;
    produce_into(&other, "q", 5).await?;
    let third = on_other
        .process_next_batch()
        .await?
        .expect("a batch of the other provider");
    assert_eq!((second.batch_id, third.batch_id), (id, id));
    assert!(!second.already_done && !third.already_done);

    assert_eq!(
        applied_by_worker(&t.client).await?,
        [
            ("other".to_owned(), 5, 5),
            ("q".to_owned(), 3, 3),
            ("q2".to_owned(), 4, 4)
        ]
    );
    let mut want = vec![
        (p1.clone(), "q".to_owned(), "c".to_owned(), Some(id.0)),
        (p1, "q2".to_owned(), "c".to_owned(), Some(id.0)),
        (p2, "q".to_owned(), "c".to_owned(), Some(id.0)),
    ];
    want.sort();
    assert_eq!(tracking(&t.client).await?, want);
    Ok(())
}
