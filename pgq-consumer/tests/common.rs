//! Shared setup: a database with every line installed, a queue, producers, ticks, and a
//! consumer that applies events into a table.

use std::time::{Duration, Instant};

use pgq_consumer::{
    async_trait, BatchHandle, Consumer, ConsumerConfig, ConsumerError, HandlerError,
};
use pgq_core::tokio_postgres::{Client, Transaction};
use pgq_core::{ConsumerName, Dsn, Event, Line, QueueName};
use pgq_testkit::TestDb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) const QUEUE: &str = "q";

pub(crate) struct Setup {
    pub(crate) db: TestDb,
    pub(crate) client: Client,
    pub(crate) dsn: Dsn,
    pub(crate) queue: QueueName,
}

/// A database with pgq, pgq_coop and pgq_ext, queue `q`, and table `applied`.
pub(crate) async fn setup() -> anyhow::Result<Setup> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::Pgq, Line::PgqCoop, Line::PgqExt]).await?;
    let queue = QueueName::new(QUEUE)?;
    pgq_core::create_queue(&client, &queue).await?;
    create_applied(&client).await?;
    let dsn = Dsn::parse(&db.dsn())?;
    Ok(Setup {
        db,
        client,
        dsn,
        queue,
    })
}

/// The table the test consumers apply events into: which work transaction applied an event,
/// in which session, when.
pub(crate) async fn create_applied(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE applied (
                 ev_id bigint NOT NULL, ev_txid bigint, data text, worker text,
                 work_xid bigint DEFAULT txid_current(), backend int DEFAULT pg_backend_pid(),
                 started timestamptz DEFAULT now(), at timestamptz DEFAULT clock_timestamp())",
        )
        .await?;
    Ok(())
}

pub(crate) fn config(queue: &QueueName, consumer: &str) -> ConsumerConfig {
    ConsumerConfig::builder(queue.clone(), ConsumerName::new(consumer).unwrap())
        .poll_interval(Duration::from_millis(50))
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .build()
}

/// `txs` transactions of `per_tx` events each, `ev_data` the text of a running number.
pub(crate) async fn produce(client: &Client, txs: u32, per_tx: u32) -> anyhow::Result<()> {
    for t in 0..txs {
        client
            .query(
                "SELECT count(pgq.insert_event('q', 't', ($1::int * $2::int + g)::text))
                   FROM generate_series(1, $2::int) g",
                &[&i32::try_from(t)?, &i32::try_from(per_tx)?],
            )
            .await?;
    }
    Ok(())
}

/// Inserts one event per `data` element in one transaction.
pub(crate) async fn produce_data(client: &Client, data: &[&str]) -> anyhow::Result<()> {
    let data: Vec<String> = data.iter().map(|d| (*d).to_owned()).collect();
    client
        .query(
            "SELECT count(pgq.insert_event('q', 't', d)) FROM unnest($1::text[]) d",
            &[&data],
        )
        .await?;
    Ok(())
}

pub(crate) async fn tick(client: &Client) -> anyhow::Result<()> {
    client.batch_execute("SELECT pgq.force_tick('q')").await?;
    client.batch_execute("SELECT pgq.ticker('q')").await?;
    Ok(())
}

pub(crate) async fn count(client: &Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Polls `sql` (a count) until it reaches `want`, up to `limit`.
pub(crate) async fn wait_count(
    client: &Client,
    sql: &str,
    want: i64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let n = count(client, sql).await?;
        if n >= want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{sql}: {n} of {want} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `applied` holds `rows` rows, then stops the runner `task` through `cancel` and
/// returns how it ended.
pub(crate) async fn stop_once_applied(
    client: &Client,
    rows: i64,
    cancel: CancellationToken,
    task: JoinHandle<pgq_consumer::Result<()>>,
) -> anyhow::Result<()> {
    wait_count(
        client,
        "SELECT count(*) FROM applied",
        rows,
        Duration::from_secs(10),
    )
    .await?;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    Ok(())
}

/// Registers sub-consumers `s1` .. `s{count}` of the cooperative consumer `group` on queue `q`.
pub(crate) async fn register_subconsumers(client: &Client, count: i32) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT pgq_coop.register_subconsumer('q', 'group', 's' || i)
               FROM generate_series(1, $1) i",
            &[&count],
        )
        .await?;
    Ok(())
}

/// Asserts that each producer transaction's events in `applied` were applied by one work
/// transaction: no batch was split between two.
pub(crate) async fn assert_each_transaction_in_one_work_transaction(
    client: &Client,
) -> anyhow::Result<()> {
    let split = count(
        client,
        "SELECT count(*) FROM (SELECT ev_txid FROM applied GROUP BY ev_txid
                               HAVING count(DISTINCT work_xid) > 1) x",
    )
    .await?;
    anyhow::ensure!(
        split == 0,
        "{split} producer transactions were applied in parts"
    );
    Ok(())
}

/// Retries while a killed predecessor's session still holds the lock.
pub(crate) async fn until_free<T, F, Fut>(mut connect: F) -> anyhow::Result<T>
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

/// Applies events into `applied`, one INSERT per chunk.
#[derive(Debug, Clone, Default)]
pub(crate) struct Apply {
    pub(crate) worker: String,
}

/// Inserts `events` into `applied`, marked as applied by `worker`.
pub(crate) async fn apply_chunk(
    tx: &Transaction<'_>,
    worker: &str,
    events: &[Event],
) -> Result<(), HandlerError> {
    let ids: Vec<i64> = events.iter().map(|e| e.id.0).collect();
    let txids: Vec<i64> = events.iter().map(|e| e.txid).collect();
    let data: Vec<Option<String>> = events.iter().map(|e| e.ev_data.clone()).collect();
    tx.execute(
        "INSERT INTO applied (ev_id, ev_txid, data, worker)
         SELECT i, t, d, $4 FROM unnest($1::int8[], $2::int8[], $3::text[]) AS u(i, t, d)",
        &[&ids, &txids, &data, &worker],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl Consumer for Apply {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            apply_chunk(batch.tx(), &self.worker, &events).await?;
        }
        Ok(())
    }

    async fn process_event(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        apply_chunk(tx, &self.worker, std::slice::from_ref(event)).await
    }
}
