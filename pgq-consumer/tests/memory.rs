//! Bounded memory: a child process (this test binary, re-run with only `memory::child`
//! selected) consumes one batch of 1,000,000 ~100-byte events through a [`Runner`]; when it
//! reports the batch done, the parent reads the child's peak RSS (`VmHWM` in
//! `/proc/PID/status`) and asserts it stays under 32 MB.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgq_consumer::{async_trait, BatchHandle, Consumer, HandlerError, Runner};
use pgq_core::tokio_postgres::Transaction;
use pgq_core::{ConsumerName, Dsn, Event};

use crate::common::{config, count, setup, tick};

const CHILD_DSN: &str = "PGQ_CONSUMER_MEMORY_DSN";
const DONE: &str = "pgq-memory-child-done";
const EVENTS: i64 = 1_000_000;
const INSERT_CHUNK: i64 = 50_000;
const LIMIT_KB: u64 = 32 * 1024;

/// Counts the events and their bytes, and checks they come in `ev_id` order.
#[derive(Debug, Default)]
struct Tally {
    events: AtomicU64,
    bytes: AtomicU64,
    last_id: AtomicU64,
    out_of_order: AtomicU64,
}

#[async_trait]
impl Consumer for Tally {
    async fn process_batch(&self, batch: &mut BatchHandle<'_, '_>) -> Result<(), HandlerError> {
        while let Some(events) = batch.next_chunk().await? {
            for event in &events {
                self.tally(event);
            }
        }
        Ok(())
    }

    async fn process_event(&self, _: &Transaction<'_>, event: &Event) -> Result<(), HandlerError> {
        self.tally(event);
        Ok(())
    }
}

impl Tally {
    fn tally(&self, event: &Event) {
        let id = u64::try_from(event.id.0).unwrap_or(0);
        if self.last_id.swap(id, Ordering::Relaxed) >= id {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        let len = event.ev_data.as_ref().map_or(0, String::len);
        self.bytes
            .fetch_add(u64::try_from(len).unwrap_or(0), Ordering::Relaxed);
    }
}

/// The child: processes the one big batch, prints what it saw, then waits for the parent to
/// read its status and close stdin. Does nothing unless started by the memory test.
#[tokio::test]
#[ignore = "the child process of the memory test"]
async fn child() -> anyhow::Result<()> {
    let Ok(dsn) = std::env::var(CHILD_DSN) else {
        return Ok(());
    };
    let dsn = Dsn::parse(&dsn)?;
    let queue = pgq_core::QueueName::new(crate::common::QUEUE)?;
    let tally = Arc::new(Tally::default());
    let mut runner = Runner::connect(&dsn, config(&queue, "big"), tally.clone()).await?;
    let report = runner
        .process_next_batch()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no batch"))?;
    println!(
        "{DONE} {} {} {} {}",
        report.events,
        tally.events.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed),
        tally.out_of_order.load(Ordering::Relaxed),
    );
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    drop(runner);
    Ok(())
}

/// `VmHWM` of a process, in kB.
fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

#[tokio::test]
async fn one_million_event_batch_in_bounded_memory() -> anyhow::Result<()> {
    let s = setup().await?;
    pgq_core::register_consumer(&s.client, &s.queue, &ConsumerName::new("big")?).await?;
    let started = Instant::now();
    // One transaction, so one batch: 20 bulk inserts of 50,000 events of 100 bytes.
    s.client.batch_execute("BEGIN").await?;
    for first in (1..=EVENTS).step_by(usize::try_from(INSERT_CHUNK)?) {
        s.client
            .execute(
                "SELECT count(*) FROM pgq.insert_event_bulk('q',
                        array_fill('t'::text, ARRAY[$2::int]),
                        ARRAY(SELECT lpad(g::text, 100, 'x')
                                FROM generate_series($1::int8, $1::int8 + $2::int - 1) g))",
                &[&first, &i32::try_from(INSERT_CHUNK)?],
            )
            .await?;
    }
    s.client.batch_execute("COMMIT").await?;
    tick(&s.client).await?;
    let produced = started.elapsed();

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "memory::child",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
            "--quiet",
        ])
        .env(CHILD_DSN, s.db.dsn())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if let Some(rest) = line?.strip_prefix(DONE) {
                return Ok((rest.to_owned(), lines));
            }
        }
        anyhow::bail!("the child exited without finishing the batch")
    });
    let done = match tokio::time::timeout(Duration::from_secs(120), reader).await {
        Ok(done) => done?,
        Err(elapsed) => {
            child.kill()?;
            return Err(elapsed.into());
        }
    };
    let peak_kb = peak_rss_kb(child.id());
    drop(child.stdin.take());
    let (done, rest) = done?;
    // Drain the child's harness output so it never writes into a closed pipe.
    let status = tokio::task::spawn_blocking(move || {
        rest.for_each(drop);
        child.wait()
    })
    .await??;
    let peak_kb = peak_kb?;
    println!(
        "memory test: {EVENTS} events produced in {produced:?}, consumed in {:?}; \
         child peak RSS (VmHWM) {peak_kb} kB",
        started.elapsed() - produced
    );
    assert!(status.success(), "child: {status}");

    let fields: Vec<u64> = done
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let events = u64::try_from(EVENTS)?;
    assert_eq!(
        fields,
        [events, events, events * 100, 0],
        "events reported, seen, bytes, out of order"
    );
    assert!(
        peak_kb < LIMIT_KB,
        "peak RSS {peak_kb} kB, limit {LIMIT_KB} kB"
    );
    // The batch was finished and committed: the consumer has no lag of events left.
    assert_eq!(
        count(
            &s.client,
            "SELECT count(*) FROM pgq.subscription s JOIN pgq.consumer c ON c.co_id = s.sub_consumer
              WHERE c.co_name = 'big' AND s.sub_last_tick = (SELECT max(tick_id) FROM pgq.tick)"
        )
        .await?,
        1
    );
    Ok(())
}
