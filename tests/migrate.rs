//! A live database on the original `pgq` extension moved onto the pgq-rs schema while pgqd
//! ticks it, a producer writes, and python3-pgq and Rust consumers read: each consumer goes on
//! from where it was and gets every event once.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use pgq_core::tokio_postgres::Client;
use pgq_core::{Flavor, MigrationOptions};
use pgq_testkit::{Deadline, TestDb};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::compat::skytools::{base_connstr, pgqd_binary, python_imports, Scratch, Worker, PYTHON};

/// Event ids as each reader got them, in order.
type Seen = Arc<Mutex<Vec<i64>>>;

/// Set to make a task finish.
type Stop = Arc<AtomicBool>;

fn stopped(stop: &Stop) -> bool {
    stop.load(Ordering::SeqCst)
}

/// Statements that failed, as "who: message".
type Failures = Arc<Mutex<Vec<String>>>;

/// Commits 3 events a transaction until `stop`, pacing itself; adds the ids to `committed`. A
/// transaction that fails (one in flight when the migration commits) is rolled back, recorded
/// in `failures`, and the producer goes on.
async fn produce(client: Client, committed: Seen, failures: Failures, stop: Stop) -> Result<()> {
    let mut n = 0;
    while !stopped(&stop) {
        let attempt = async {
            client.batch_execute("BEGIN").await?;
            let mut ids = Vec::new();
            for _ in 0..3 {
                n += 1;
                let row = client
                    .query_one("SELECT pgq.insert_event('q', 'e', $1)", &[&n.to_string()])
                    .await?;
                ids.push(row.get::<_, i64>(0));
            }
            client.batch_execute("COMMIT").await?;
            Ok::<_, pgq_core::tokio_postgres::Error>(ids)
        };
        match attempt.await {
            Ok(ids) => committed.lock().unwrap().extend(ids),
            Err(err) => {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("producer: {:#}", anyhow::Error::from(err)));
                client.batch_execute("ROLLBACK").await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    Ok(())
}

/// A Rust consumer: a batch a transaction, until `stop` and no batch is left. A failed
/// transaction is rolled back and recorded, and the consumer goes on.
async fn consume(client: Client, seen: Seen, failures: Failures, stop: Stop) -> Result<()> {
    loop {
        let attempt = async {
            client.batch_execute("BEGIN").await?;
            let batch: Option<i64> = client
                .query_one("SELECT pgq.next_batch('q', 'rust')", &[])
                .await?
                .get(0);
            let mut ids = Vec::new();
            if let Some(batch) = batch {
                let rows = client
                    .query("SELECT ev_id FROM pgq.get_batch_events($1)", &[&batch])
                    .await?;
                ids.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
                client
                    .query_one("SELECT pgq.finish_batch($1)", &[&batch])
                    .await?;
            }
            client.batch_execute("COMMIT").await?;
            Ok::<_, pgq_core::tokio_postgres::Error>(batch.map(|_| ids))
        };
        match attempt.await {
            Ok(Some(ids)) => seen.lock().unwrap().extend(ids),
            Ok(None) if stopped(&stop) => return Ok(()),
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(err) => {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("rust: {:#}", anyhow::Error::from(err)));
                client.batch_execute("ROLLBACK").await?;
            }
        }
    }
}

/// python3-pgq's `pgq.Consumer` (`plain_consumer.py`, which drains the queue and exits), run
/// again and again until `stop` and a run finds nothing. A run that fails (its batch rolled
/// back) is recorded in `failures`.
async fn consume_python(
    scratch: Arc<Scratch>,
    config: String,
    name: &'static str,
    seen: Seen,
    failures: Failures,
    stop: Stop,
) -> Result<()> {
    loop {
        let stopping = stopped(&stop);
        let worker = Worker::spawn(
            &scratch,
            name,
            "plain_consumer.py",
            &[&config, "--survive-errors"],
        )?;
        let lines = worker
            .finish(Deadline::after(Duration::from_secs(60)))
            .await?;
        for line in &lines {
            let batch: Value = serde_json::from_str(line)?;
            if let Some(error) = batch["error"].as_str() {
                failures.lock().unwrap().push(format!("{name}: {error}"));
                continue;
            }
            let events = batch["events"].as_array().context("events")?;
            seen.lock()
                .unwrap()
                .extend(events.iter().filter_map(|ev| ev[0].as_i64()));
        }
        if stopping && lines.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One run of `plain_consumer.py` as consumer `name`: it drains what is ticked and exits.
async fn read_once(
    scratch: &Scratch,
    name: &str,
    config: &str,
    seen: &Seen,
    deadline: Deadline,
) -> Result<()> {
    let worker = Worker::spawn(scratch, name, "plain_consumer.py", &[config])?;
    for line in worker.finish(deadline).await? {
        let batch: Value = serde_json::from_str(&line)?;
        let events = batch["events"].as_array().context("events")?;
        seen.lock()
            .unwrap()
            .extend(events.iter().filter_map(|ev| ev[0].as_i64()));
    }
    Ok(())
}

/// Waits until each `(seen, count, who)` of `readers` holds `count` events; fails early with
/// the error of a task of `tasks` that ended.
async fn wait_for(
    readers: [(&Seen, usize, &str); 2],
    tasks: &mut [&mut JoinHandle<Result<()>>],
    deadline: Deadline,
) -> Result<()> {
    for (seen, count, who) in readers {
        while seen.lock().unwrap().len() < count {
            for task in tasks.iter_mut() {
                if task.is_finished() {
                    (&mut **task).await??;
                    bail!("a task ended while waiting for {who}");
                }
            }
            deadline
                .pause(format!("{who} to read {count} events"))
                .await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn live_extension_database_moves_over() -> Result<()> {
    let Some(pgqd) = pgqd_binary()? else {
        return Ok(());
    };
    if !python_imports("pgq, psycopg2").await {
        pgq_testkit::reference_missing(&format!(
            "python3-pgq missing ({PYTHON} cannot import pgq); install python3-pgq"
        ))?;
        return Ok(());
    }
    let db = TestDb::new().await?;
    let mut admin = db.client().await?;
    if !pgq_testkit::reference_available(&admin).await? {
        return Ok(());
    }
    pgq_testkit::create_reference_extension(&admin).await?;
    admin
        .batch_execute(
            "SELECT pgq.create_queue('q');
             SELECT pgq.set_queue_config('q', 'ticker_max_count', '20');
             SELECT pgq.register_consumer('q', 'rust');
             SELECT pgq.register_consumer('q', 'py_live');
             SELECT pgq.register_consumer('q', 'py_late');
             SELECT pgq.register_consumer('q', 'py_paused');",
        )
        .await?;

    let scratch = Arc::new(Scratch::new()?);
    let pgqd_config = scratch.pgqd_config(&base_connstr(&db.dsn()), &[db.name()])?;
    let mut daemon = scratch.start("pgqd", pgqd, &[OsStr::new("-v"), pgqd_config.as_os_str()])?;
    let dsn = db.dsn();
    let py_config = |consumer: &str| -> Result<String> {
        let path = scratch.config(
            consumer,
            "plain_consumer",
            &[
                ("db", &dsn),
                ("queue_name", "q"),
                ("consumer_name", consumer),
            ],
        )?;
        Ok(path.to_str().context("a UTF-8 temp dir")?.to_owned())
    };
    let (live_config, late_config, paused_config) = (
        py_config("py_live")?,
        py_config("py_late")?,
        py_config("py_paused")?,
    );

    let deadline = Deadline::after(Duration::from_secs(120));
    let stop_producer = Stop::default();
    let stop_readers = Stop::default();
    let produced = Seen::default();
    let failures = Failures::default();
    let mut producer = tokio::spawn(produce(
        db.client().await?,
        produced.clone(),
        failures.clone(),
        stop_producer.clone(),
    ));
    let (rust_seen, live_seen, late_seen, paused_seen) = (
        Seen::default(),
        Seen::default(),
        Seen::default(),
        Seen::default(),
    );
    let mut rust = tokio::spawn(consume(
        db.client().await?,
        rust_seen.clone(),
        failures.clone(),
        stop_readers.clone(),
    ));
    let mut live = tokio::spawn(consume_python(
        scratch.clone(),
        live_config,
        "py_live",
        live_seen.clone(),
        failures.clone(),
        stop_readers.clone(),
    ));

    // Before: the live readers are under way; py_paused reads what there is and stops until
    // after the move; py_late has read nothing.
    wait_for(
        [
            (&rust_seen, 60, "the Rust consumer"),
            (&live_seen, 60, "python3-pgq"),
        ],
        &mut [&mut producer, &mut rust, &mut live],
        deadline,
    )
    .await?;
    read_once(
        &scratch,
        "py_paused",
        &paused_config,
        &paused_seen,
        deadline,
    )
    .await?;
    ensure!(
        !paused_seen.lock().unwrap().is_empty(),
        "py_paused read nothing"
    );
    let report = pgq_core::migrate_from_extension(&mut admin, MigrationOptions::new()).await?;
    assert_eq!((report.queues, report.consumers), (1, 4), "{report}");
    assert_eq!(pgq_core::flavor(&admin).await?, Flavor::Ours);
    let at_move = (
        rust_seen.lock().unwrap().len(),
        live_seen.lock().unwrap().len(),
    );

    // After: everyone goes on, on the new schema.
    wait_for(
        [
            (&rust_seen, at_move.0 + 60, "the Rust consumer"),
            (&live_seen, at_move.1 + 60, "python3-pgq"),
        ],
        &mut [&mut producer, &mut rust, &mut live],
        deadline,
    )
    .await?;
    stop_producer.store(true, Ordering::SeqCst);
    producer.await??;
    let produced = produced.lock().unwrap().clone();
    // pgqd ticks the last events; then the readers stop once a pass finds nothing.
    let newest: i64 = *produced.last().context("events were produced")?;
    loop {
        let ticked: bool = admin
            .query_one(
                "SELECT tick_event_seq >= $1 FROM pgq.tick
                  WHERE tick_queue = 1 ORDER BY tick_id DESC LIMIT 1",
                &[&newest],
            )
            .await?
            .get(0);
        if ticked {
            break;
        }
        daemon.check(&scratch)?;
        deadline.pause("pgqd to tick the last events").await?;
    }
    stop_readers.store(true, Ordering::SeqCst);
    rust.await??;
    live.await??;
    for (name, config, seen) in [
        ("py_late", &late_config, &late_seen),
        ("py_paused", &paused_config, &paused_seen),
    ] {
        read_once(&scratch, name, config, seen, deadline).await?;
    }
    daemon.check(&scratch)?;

    let readers: BTreeMap<&str, &Seen> = [
        ("rust", &rust_seen),
        ("py_live", &live_seen),
        ("py_late", &late_seen),
        ("py_paused", &paused_seen),
    ]
    .into_iter()
    .collect();
    for (name, seen) in readers {
        let mut got = seen.lock().unwrap().clone();
        got.sort_unstable();
        let mut want = produced.clone();
        want.sort_unstable();
        ensure!(
            got.len() == want.len(),
            "{name}: read {} events, {} were produced",
            got.len(),
            want.len()
        );
        assert_eq!(got, want, "{name}: every event once");
    }
    // Only what was in flight when the migration committed fails, at most once per client,
    // and each such transaction was rolled back whole (the counts above hold).
    let failures = failures.lock().unwrap().clone();
    for client in ["producer", "rust", "py_live"] {
        let theirs = failures
            .iter()
            .filter(|f| f.starts_with(&format!("{client}:")))
            .count();
        ensure!(theirs <= 1, "{client} failed {theirs} times: {failures:#?}");
    }
    let pgqd_errors: Vec<String> = std::fs::read_to_string(scratch.path("pgqd.log"))?
        .lines()
        .filter(|line| line.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "transactions in flight at the move that failed: {failures:#?}\npgqd's errors: \
         {pgqd_errors:#?}"
    );
    drop(daemon);
    Arc::try_unwrap(scratch)
        .map_err(|_| anyhow::anyhow!("the scratch directory is still shared"))?
        .remove()?;
    Ok(())
}
