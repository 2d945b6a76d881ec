//! Skytools' own Python clients (python3-pgq: `pgq.CoopConsumer`, `pgq.Consumer`,
//! `pgq.RemoteConsumer`, `pgq.SerialConsumer`) run unchanged against our schema.
//!
//! The worker scripts live in `tests/python/`; each test writes their skytools config files
//! (with log and pid files) into a scratch directory of its own ([`Scratch`]), which is removed
//! when the test passes and kept, for the logs, when it fails. The scripts run under
//! `/usr/bin/python3`, the interpreter the Debian packages install into. Without python3-pgq the
//! tests print `SKIPPED` and pass, unless `PGQ_REQUIRE_REFERENCE=1`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use pgq_core::Line;
use pgq_testkit::{Deadline, TestDb, POLL};
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::skytools::{python_imports, Scratch, Worker, PYTHON};
use super::{queue_db, QUEUE};

/// How long a test waits for its Python workers, per phase.
const PATIENCE: Duration = Duration::from_secs(15);

/// Whether `/usr/bin/python3` can import python3-pgq; when not, see
/// [`pgq_testkit::reference_missing`].
async fn python_pgq() -> Result<bool> {
    if python_imports("pgq, pgq.coopconsumer, pgq.remoteconsumer, psycopg2").await {
        return Ok(true);
    }
    pgq_testkit::reference_missing(&format!(
        "python3-pgq missing ({PYTHON} cannot import pgq); install python3-pgq"
    ))?;
    Ok(false)
}

/// `pgq.force_tick` then `pgq.ticker` on QUEUE: always a tick.
async fn tick(client: &Client) -> Result<()> {
    client
        .batch_execute("SELECT pgq.force_tick('q'); SELECT pgq.ticker('q')")
        .await
        .context("force_tick + ticker")
}

/// Two `pgq.CoopConsumer` processes of one group share ~60 events committed in 30 transactions
/// while they run; events handed back with `ev.tag_retry(0)` return through
/// `pgq.maint_retry_events`. Every event is done exactly once (the retried ones on their second
/// delivery), no batch goes to both sub-consumers, and both end idle.
#[tokio::test]
async fn coop_consumer_processes_every_event_once() -> Result<()> {
    if !python_pgq().await? {
        return Ok(());
    }
    let (db, admin) = queue_db(&[Line::PgqCoop]).await?;
    admin
        .batch_execute(
            "SELECT pgq.create_queue('q');
             SELECT pgq.set_queue_config('q', 'ticker_max_count', '1');
             SELECT pgq_coop.register_subconsumer('q', 'grp', 's1');
             SELECT pgq_coop.register_subconsumer('q', 'grp', 's2');
             CREATE TABLE coop_done (ev_id bigint, ev_data text, ev_retry integer, sub text,
                                     batch_id bigint);",
        )
        .await?;

    // Which events there will be: 30 transactions of 1 to 3 events, some marked for a retry.
    let mut transactions = Vec::new();
    for tx in 1..=30 {
        let events: Vec<String> = (1..=tx % 3 + 1)
            .map(|i| {
                let data = format!("tx{tx}-{i}");
                if (tx + i) % 7 == 0 {
                    format!("retry-{data}")
                } else {
                    data
                }
            })
            .collect();
        transactions.push(events);
    }
    let expected = transactions.iter().map(Vec::len).sum::<usize>().to_string();

    let scratch = Scratch::new()?;
    let dsn = db.dsn();
    let deadline = Deadline::after(PATIENCE);
    let mut workers = Vec::new();
    for (sub, lazy_fetch) in [("s1", "2"), ("s2", "0")] {
        let config = scratch.config(
            &format!("coop_{sub}"),
            "coop_worker",
            &[
                ("db", &dsn),
                ("queue_name", QUEUE),
                ("consumer_name", "grp"),
                ("subconsumer_name", sub),
                ("subconsumer_timeout", "1 hour"),
                ("pgq_lazy_fetch", lazy_fetch),
            ],
        )?;
        let config = config.to_str().context("a UTF-8 temp dir")?;
        let secs = PATIENCE.as_secs().to_string();
        workers.push(Worker::spawn(
            &scratch,
            sub,
            "coop_worker.py",
            &[config, &expected, &secs],
        )?);
    }
    for worker in &mut workers {
        let ready = worker.line(deadline).await?;
        ensure!(
            ready == "ready",
            "{}: expected 'ready', got {ready:?}",
            worker.name
        );
    }

    let mut producer = db.client().await?;
    let mut inserted = BTreeMap::new();
    for events in &transactions {
        let tx = producer.transaction().await?;
        for data in events {
            let id: i64 = tx
                .query_one("SELECT pgq.insert_event('q', 'ev', $1)", &[data])
                .await?
                .get(0);
            inserted.insert(id, data.clone());
        }
        tx.commit().await?;
        admin.batch_execute("SELECT pgq.ticker('q')").await?;
    }

    // Until both workers saw every event done: bring retried events back and tick for them.
    loop {
        let mut running = 0;
        for worker in &mut workers {
            if !worker.exited()? {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        ensure!(
            !deadline.passed(),
            "the coop workers did not finish in {} s{}{}",
            PATIENCE.as_secs(),
            workers[0].stderr(),
            workers[1].stderr()
        );
        let moved: i32 = admin
            .query_one("SELECT pgq.maint_retry_events()", &[])
            .await?
            .get(0);
        if moved > 0 {
            tick(&admin).await?;
        }
        tokio::time::sleep(POLL).await;
    }
    for worker in workers {
        let name = worker.name.clone();
        let said = worker.finish(deadline).await?;
        eprintln!("{name}: {}", said.join(" | "));
    }

    let rows = admin
        .query(
            "SELECT ev_id, ev_data, ev_retry FROM coop_done ORDER BY ev_id, batch_id",
            &[],
        )
        .await?;
    let done: Vec<(i64, String, Option<i32>)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let want: Vec<(i64, String, Option<i32>)> = inserted
        .iter()
        .map(|(id, data)| (*id, data.clone(), data.starts_with("retry").then_some(1)))
        .collect();
    assert_eq!(
        done, want,
        "every event done exactly once, the retried ones on their retry"
    );
    let shared: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT batch_id FROM coop_done GROUP BY batch_id
                                    HAVING count(DISTINCT sub) > 1) shared",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(shared, 0, "batches processed by both sub-consumers");
    let rows = admin
        .query(
            "SELECT c.co_name, s.sub_batch FROM pgq.subscription s
               JOIN pgq.consumer c ON c.co_id = s.sub_consumer ORDER BY c.co_name",
            &[],
        )
        .await?;
    let batches: Vec<(String, Option<i64>)> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(
        batches,
        [
            ("grp".to_owned(), None),
            ("grp.s1".to_owned(), None),
            ("grp.s2".to_owned(), None)
        ],
        "the group and its sub-consumers hold no batch"
    );
    let retry_left: i64 = admin
        .query_one("SELECT count(*) FROM pgq.retry_queue", &[])
        .await?
        .get(0);
    assert_eq!(retry_left, 0, "events left in the retry queue");
    let by_sub = admin
        .query(
            "SELECT sub, count(*), count(DISTINCT batch_id) FROM coop_done GROUP BY sub
              ORDER BY sub",
            &[],
        )
        .await?;
    for row in &by_sub {
        eprintln!(
            "{}: {} events in {} batches",
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        );
    }
    scratch.remove()
}

/// Reads consumer `consumer`'s batches through the SQL API until there is none, as
/// `plain_consumer.py` prints them (without the batch id, which differs between consumers).
async fn rust_batches(client: &Client, consumer: &str) -> Result<Vec<Value>> {
    let mut batches = Vec::new();
    loop {
        let row = client
            .query_one(
                "SELECT batch_id, prev_tick_id, cur_tick_id FROM pgq.next_batch_info('q', $1)",
                &[&consumer],
            )
            .await?;
        let Some(batch) = row.get::<_, Option<i64>>(0) else {
            return Ok(batches);
        };
        let events: Vec<Value> = client
            .query(
                "SELECT ev_id, ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4,
                        ev_retry, ev_txid
                   FROM pgq.get_batch_events($1)",
                &[&batch],
            )
            .await?
            .iter()
            .map(|ev| {
                json!([
                    ev.get::<_, i64>(0),
                    ev.get::<_, Option<String>>(1),
                    ev.get::<_, Option<String>>(2),
                    ev.get::<_, Option<String>>(3),
                    ev.get::<_, Option<String>>(4),
                    ev.get::<_, Option<String>>(5),
                    ev.get::<_, Option<String>>(6),
                    ev.get::<_, Option<i32>>(7),
                    ev.get::<_, i64>(8),
                ])
            })
            .collect();
        batches.push(json!({
            "prev_tick_id": row.get::<_, Option<i64>>(1),
            "tick_id": row.get::<_, Option<i64>>(2),
            "events": events,
        }));
        client
            .query_one("SELECT pgq.finish_batch($1)", &[&batch])
            .await?;
    }
}

/// `pgq.Consumer` subclasses, reading events eagerly, through a cursor in pages of 3 and
/// through a cursor with a `table_filter`, see the batches and events a Rust reader of the SQL
/// API sees.
#[tokio::test]
async fn plain_consumer_reads_our_batches() -> Result<()> {
    if !python_pgq().await? {
        return Ok(());
    }
    let (db, admin) = queue_db(&[]).await?;
    admin
        .batch_execute(
            "SELECT pgq.create_queue('q');
             SELECT pgq.register_consumer('q', 'py_eager');
             SELECT pgq.register_consumer('q', 'py_lazy');
             SELECT pgq.register_consumer('q', 'py_filtered');
             SELECT pgq.register_consumer('q', 'rust');",
        )
        .await?;

    type Ev = (
        &'static str,
        Option<&'static str>,
        [Option<&'static str>; 4],
    );
    let t1 = Some("public.t1");
    let t2 = Some("public.t2");
    let transactions: [&[Ev]; 5] = [
        // Exactly one page of the cursor.
        &[
            ("I", Some("a1"), [t1, None, None, None]),
            ("U", Some("a2"), [t2, Some("x2"), None, None]),
            ("D", Some("a3"), [t1, None, Some("x3"), Some("x4")]),
        ],
        // No events: an empty batch.
        &[],
        // Several pages, text that needs care, NULLs.
        &[
            (
                "I",
                Some("b1 'quoted' \\ back\\slash"),
                [t1, None, None, None],
            ),
            ("I", Some("b2 üñí€ 🐘"), [t2, None, None, None]),
            ("I", None, [t1, None, None, None]),
            ("I", Some(""), [None, None, None, None]),
            (
                "I",
                Some("b5\nline two\ttab"),
                [t1, Some("e2"), Some("e3"), Some("e4")],
            ),
            ("U", Some("b6"), [t1, None, None, None]),
            ("D", Some("b7"), [t2, None, None, None]),
        ],
        &[("I", Some("c1"), [t1, None, None, None])],
        &[
            ("x", Some("d1"), [None, None, None, None]),
            ("x", Some("d2"), [t2, None, None, None]),
        ],
    ];
    let mut producer = db.client().await?;
    let mut inserted = Vec::new();
    for events in transactions {
        let tx = producer.transaction().await?;
        for (ev_type, data, [e1, e2, e3, e4]) in events {
            let id: i64 = tx
                .query_one(
                    "SELECT pgq.insert_event('q', $1, $2, $3, $4, $5, $6)",
                    &[ev_type, data, e1, e2, e3, e4],
                )
                .await?
                .get(0);
            inserted.push(id);
        }
        tx.commit().await?;
        tick(&admin).await?;
    }

    let scratch = Scratch::new()?;
    let dsn = db.dsn();
    let deadline = Deadline::after(PATIENCE);
    let mut workers = Vec::new();
    for (consumer, lazy_fetch, filter) in [
        ("py_eager", "0", ""),
        ("py_lazy", "3", ""),
        ("py_filtered", "2", "t1"),
    ] {
        let config = scratch.config(
            consumer,
            "plain_consumer",
            &[
                ("db", &dsn),
                ("queue_name", QUEUE),
                ("consumer_name", consumer),
                ("pgq_lazy_fetch", lazy_fetch),
                ("table_filter", filter),
            ],
        )?;
        let config = config.to_str().context("a UTF-8 temp dir")?;
        workers.push(Worker::spawn(
            &scratch,
            consumer,
            "plain_consumer.py",
            &[config],
        )?);
    }

    let ours = rust_batches(&admin, "rust").await?;
    let read: Vec<i64> = ours
        .iter()
        .flat_map(|batch| batch["events"].as_array().into_iter().flatten())
        .filter_map(|ev| ev[0].as_i64())
        .collect();
    assert_eq!(
        read, inserted,
        "the Rust reader sees every event once, in order"
    );
    let filtered: Vec<Value> = ours
        .iter()
        .map(|batch| {
            let mut batch = batch.clone();
            if let Some(events) = batch["events"].as_array_mut() {
                events.retain(|ev| ev[3] == json!("public.t1"));
            }
            batch
        })
        .collect();

    for worker in workers {
        let name = worker.name.clone();
        let mut batch_ids = Vec::new();
        let mut seen = Vec::new();
        for line in worker.finish(deadline).await? {
            let mut batch: Value = serde_json::from_str(&line)
                .with_context(|| format!("{name}: not a batch: {line}"))?;
            let id = batch
                .as_object_mut()
                .and_then(|batch| batch.remove("batch_id"))
                .and_then(|id| id.as_i64())
                .with_context(|| format!("{name}: no batch id in {line}"))?;
            batch_ids.push(id);
            seen.push(batch);
        }
        let want = if name == "py_filtered" {
            &filtered
        } else {
            &ours
        };
        assert_eq!(&seen, want, "{name}'s batches");
        let mut distinct = batch_ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            batch_ids.len(),
            "{name}'s batch ids {batch_ids:?}"
        );
    }

    let rows = admin
        .query(
            "SELECT consumer_name, last_tick, current_batch FROM pgq.get_consumer_info('q')
              ORDER BY consumer_name",
            &[],
        )
        .await?;
    let last_ticks: Vec<(String, Option<i64>, Option<i64>)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let last = ours.last().and_then(|batch| batch["tick_id"].as_i64());
    let want: Vec<(String, Option<i64>, Option<i64>)> =
        ["py_eager", "py_filtered", "py_lazy", "rust"]
            .iter()
            .map(|name| ((*name).to_owned(), last, None))
            .collect();
    assert_eq!(
        last_ticks, want,
        "every consumer at the last tick, no batch open"
    );
    scratch.remove()
}

/// Starts `remote_consumer.py` for `consumer` (`remote` or `serial`) in `mode`.
fn remote_worker(
    scratch: &Scratch,
    src: &str,
    dst: &str,
    consumer: &str,
    mode: &str,
) -> Result<Worker> {
    let kind = consumer
        .strip_suffix("_c")
        .context("consumer names end in _c")?;
    let config = scratch.config(
        consumer,
        "remote_consumer",
        &[
            ("src_db", src),
            ("dst_db", dst),
            ("queue_name", QUEUE),
            ("consumer_name", consumer),
            ("pgq_lazy_fetch", "2"),
        ],
    )?;
    let config = config.to_str().context("a UTF-8 temp dir")?;
    Worker::spawn(
        scratch,
        &format!("{consumer}-{mode}"),
        "remote_consumer.py",
        &[config, kind, mode],
    )
}

/// Runs `remote_consumer.py` in drain mode for both consumers at once and checks how many
/// batches each worked.
async fn drain_both(scratch: &Scratch, src: &str, dst: &str, batches: usize) -> Result<()> {
    let deadline = Deadline::after(PATIENCE);
    let workers = [
        remote_worker(scratch, src, dst, "remote_c", "drain")?,
        remote_worker(scratch, src, dst, "serial_c", "drain")?,
    ];
    for worker in workers {
        let name = worker.name.clone();
        let said = worker.finish(deadline).await?;
        assert_eq!(said, [format!("drained {batches}")], "{name}");
    }
    Ok(())
}

/// `pgq.RemoteConsumer` and `pgq.SerialConsumer` apply events to a database that has only our
/// `pgq_ext` line and record their batches (ticks) there; a worker killed after its commit in
/// that database and before `pgq.finish_batch` gets the batch again, skips it, and every event
/// is applied exactly once.
#[tokio::test]
async fn remote_consumer_tracks_batches_in_pgq_ext() -> Result<()> {
    if !python_pgq().await? {
        return Ok(());
    }
    let (src_db, src) = queue_db(&[]).await?;
    src.batch_execute("SELECT pgq.create_queue('q')").await?;
    let dst_db = TestDb::new().await?;
    let mut dst = dst_db.client().await?;
    pgq_core::install(&mut dst, &[Line::PgqExt])
        .await
        .context("installing pgq_ext alone")?;
    dst.batch_execute(
        "CREATE TABLE applied (who text, ev_id bigint, ev_data text, batch_id bigint)",
    )
    .await?;
    let pgq_there: bool = dst
        .query_one("SELECT to_regnamespace('pgq') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(!pgq_there, "the target database has no pgq schema");

    let scratch = Scratch::new()?;
    let (src_dsn, dst_dsn) = (src_db.dsn(), dst_db.dsn());
    // Registers both consumers; no batch yet.
    drain_both(&scratch, &src_dsn, &dst_dsn, 0).await?;

    let mut inserted = BTreeMap::new();
    for events in [
        &["a0"][..],
        &["a1"],
        &["a2"],
        &["crash0", "crash1"],
        &["b0"],
    ] {
        for data in events {
            let id: i64 = src
                .query_one("SELECT pgq.insert_event('q', 'ev', $1)", &[data])
                .await?
                .get(0);
            inserted.insert(id, (*data).to_owned());
        }
        tick(&src).await?;
    }

    // Three batches go through; the crash batch is committed in dst, then the workers die.
    let deadline = Deadline::after(PATIENCE);
    let mut crashing = [
        remote_worker(&scratch, &src_dsn, &dst_dsn, "remote_c", "crash")?,
        remote_worker(&scratch, &src_dsn, &dst_dsn, "serial_c", "crash")?,
    ];
    let mut open = Vec::new();
    for worker in &mut crashing {
        let said = worker.line(deadline).await?;
        let batch: i64 = said
            .strip_prefix("committed-remote ")
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("{}: unexpected {said:?}", worker.name))?;
        open.push(batch);
    }
    for worker in crashing {
        worker.kill().await?;
    }
    for (consumer, batch) in ["remote_c", "serial_c"].into_iter().zip(&open) {
        let current: Option<i64> = src
            .query_one(
                "SELECT current_batch FROM pgq.get_consumer_info('q', $1)",
                &[&consumer],
            )
            .await?
            .get(0);
        assert_eq!(
            current,
            Some(*batch),
            "{consumer}'s batch stays open in the queue"
        );
        let applied: Vec<String> = dst
            .query(
                "SELECT ev_data FROM applied WHERE who = $1 AND batch_id = $2 ORDER BY ev_id",
                &[&consumer, batch],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(applied, ["crash0", "crash1"], "{consumer} committed in dst");
    }

    // A new worker gets the open batch again, finds it done in dst, and goes on to b0.
    drain_both(&scratch, &src_dsn, &dst_dsn, 2).await?;

    for consumer in ["remote_c", "serial_c"] {
        let rows = dst
            .query(
                "SELECT ev_id, ev_data FROM applied WHERE who = $1 ORDER BY ev_id",
                &[&consumer],
            )
            .await?;
        let applied: BTreeMap<i64, String> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        assert_eq!(rows.len(), inserted.len(), "{consumer}: rows applied");
        assert_eq!(applied, inserted, "{consumer}: every event applied once");
        let row = src
            .query_one(
                "SELECT last_tick, current_batch FROM pgq.get_consumer_info('q', $1)",
                &[&consumer],
            )
            .await?;
        let (last_tick, current): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        assert_eq!(current, None, "{consumer} holds no batch");
        let max_tick: i64 = src
            .query_one("SELECT max(tick_id) FROM pgq.tick", &[])
            .await?
            .get(0);
        assert_eq!(last_tick, Some(max_tick), "{consumer} is at the last tick");
    }
    let row = dst
        .query_one(
            "SELECT (SELECT last_batch_id FROM pgq_ext.completed_batch
                      WHERE consumer_id = 'remote_c'),
                    (SELECT max(batch_id) FROM applied WHERE who = 'remote_c'),
                    pgq_ext.get_last_tick('serial_c')",
            &[],
        )
        .await?;
    let (done_batch, last_applied, serial_tick): (Option<i64>, Option<i64>, Option<i64>) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        done_batch, last_applied,
        "pgq_ext.completed_batch holds remote_c's last batch"
    );
    let serial_last: Option<i64> = src
        .query_one(
            "SELECT last_tick FROM pgq.get_consumer_info('q', 'serial_c')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        serial_tick, serial_last,
        "pgq_ext.get_last_tick is serial_c's position in the queue"
    );
    scratch.remove()
}
