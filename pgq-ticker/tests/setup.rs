//! Shared helpers: databases with PGQ, polling with a deadline, the real binary.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use pgq_core::maintenance::TICK_CHANNEL;
use pgq_core::tokio_postgres::{AsyncMessage, Client, NoTls};
use pgq_core::{ConsumerName, Dsn, Event, Line, QueueName, QueueSetting};
use pgq_testkit::{Deadline, Process, TestDb};
use pgq_ticker::{Databases, TickerConfig};
use tokio::sync::mpsc;

pub(crate) use pgq_testkit::{consumer, queue, wait_for};

/// A connection to `db` with the pgq-rs schema installed.
pub(crate) async fn ours(db: &TestDb) -> anyhow::Result<Client> {
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    Ok(client)
}

/// A connection to `db` with the original PGQ extension; `None` when it is not available
/// (the testkit printed a SKIPPED line, or failed with `PGQ_REQUIRE_REFERENCE=1`).
pub(crate) async fn extension(db: &TestDb) -> anyhow::Result<Option<Client>> {
    let client = db.client().await?;
    if !pgq_testkit::reference_available(&client).await? {
        return Ok(None);
    }
    pgq_testkit::create_reference_extension(&client).await?;
    Ok(Some(client))
}

/// Creates a queue that ticks as soon as one event waits (`ticker_max_count = 1`) and
/// registers the consumers. A first event and a tick come before the registrations: PGQ counts
/// new events from the event sequence's last value, which does not move at a fresh sequence's
/// first use, and a queue with a single tick gets a second at the next pass whatever waits.
pub(crate) async fn queue_with(
    client: &Client,
    name: &str,
    consumers: &[&str],
) -> anyhow::Result<QueueName> {
    let q = queue(name);
    pgq_core::create_queue(client, &q).await?;
    pgq_core::set_queue_config(client, &q, QueueSetting::TickerMaxCount(1)).await?;
    pgq_core::insert_event(client, &q, "warm-up", "").await?;
    pgq_core::force_tick(client, &q).await?;
    pgq_core::ticker(client, &q).await?;
    for c in consumers {
        pgq_core::register_consumer(client, &q, &consumer(c)).await?;
    }
    Ok(q)
}

/// How many ticks the queue has.
pub(crate) async fn tick_count(client: &Client, queue: &QueueName) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pgq.tick t JOIN pgq.queue q ON q.queue_id = t.tick_queue
              WHERE q.queue_name = $1",
            &[&queue.as_str()],
        )
        .await?
        .get(0))
}

/// The event table the queue writes to.
pub(crate) async fn cur_table(client: &Client, queue: &QueueName) -> anyhow::Result<i32> {
    Ok(client
        .query_one(
            "SELECT queue_cur_table FROM pgq.queue WHERE queue_name = $1",
            &[&queue.as_str()],
        )
        .await?
        .get(0))
}

/// Takes the consumer's next batch, reads it whole and finishes it.
pub(crate) async fn take_batch(
    client: &mut Client,
    queue: &QueueName,
    consumer: &ConsumerName,
) -> anyhow::Result<Option<Vec<Event>>> {
    let tx = client.transaction().await?;
    let Some(batch) = pgq_core::next_batch(&tx, queue, consumer).await? else {
        return Ok(None);
    };
    let events = pgq_core::batch_events(&tx, batch.id).await?;
    pgq_core::finish_batch(&tx, batch.id).await?;
    tx.commit().await?;
    Ok(Some(events))
}

/// Takes the consumer's batches (read whole and finished) until some hold events, and returns
/// those events; fails after `timeout`.
pub(crate) async fn wait_for_events(
    client: &mut Client,
    queue: &QueueName,
    consumer: &ConsumerName,
    timeout: Duration,
) -> anyhow::Result<Vec<Event>> {
    let deadline = Deadline::after(timeout);
    loop {
        match take_batch(client, queue, consumer).await? {
            Some(events) if !events.is_empty() => return Ok(events),
            Some(_) => continue,
            None => {}
        }
        deadline
            .pause(format!("events of {queue} for {consumer}"))
            .await?;
    }
}

/// Inserts an event and waits for the daemon to tick it.
pub(crate) async fn ticked(client: &Client, q: &QueueName) -> anyhow::Result<()> {
    let before = tick_count(client, q).await?;
    pgq_core::insert_event(client, q, "t", "x").await?;
    wait_for("a tick", Duration::from_secs(10), || async {
        Ok(tick_count(client, q).await? > before)
    })
    .await
}

/// A daemon configuration with short periods, for tests.
pub(crate) fn fast_config(databases: Databases) -> anyhow::Result<TickerConfig> {
    Ok(TickerConfig::builder(databases)
        .ticker_period(Duration::from_millis(50))
        .retry_period(Duration::from_millis(200))
        .discovery_period(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()?)
}

pub(crate) fn dsn(text: &str) -> anyhow::Result<Dsn> {
    Ok(Dsn::parse(text)?)
}

/// A connection that LISTENs on `pgq_tick`, and the payloads (queue names) it receives.
pub(crate) async fn listen_ticks(
    dsn: &str,
) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<String>)> {
    let (client, mut connection) = pgq_core::tokio_postgres::connect(dsn, NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if n.channel() == TICK_CHANNEL && tx.send(n.payload().to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    pgq_core::maintenance::listen_ticks(&client).await?;
    Ok((client, rx))
}

/// The real `pgq-ticker` binary, with no `PGQ_DSN` or `PGQ_LOG` of the caller's.
fn ticker_binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgq-ticker"));
    command.env_remove("PGQ_DSN").env_remove("PGQ_LOG");
    command
}

/// Starts the binary in the background, its stderr collected.
pub(crate) fn spawn_ticker(args: &[&str]) -> anyhow::Result<Process> {
    Ok(Process::spawn(ticker_binary().args(args))?)
}

/// Runs the binary to completion: exit code, stdout, stderr.
pub(crate) async fn run_binary(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut command = tokio::process::Command::from(ticker_binary());
    Ok(pgq_testkit::output(command.args(args)).await?)
}

/// The log lines the ticker writes while the guard lives (on this thread).
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    pub(crate) fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let log = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || log.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub(crate) fn count(&self, text: &str) -> usize {
        self.text().matches(text).count()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
