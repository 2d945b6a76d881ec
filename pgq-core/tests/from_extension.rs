//! Moving a database from the original `pgq` extension onto the pgq-rs schema in place: what
//! is carried over, what is refused (and that a refusal changes nothing), and attacks on it.

use std::collections::BTreeMap;

use anyhow::Context as _;
use pgq_core::tokio_postgres::error::SqlState;
use pgq_core::tokio_postgres::Client;
use pgq_core::{Dsn, Error, Flavor, Line, MigrationOptions, Refusal};
use pgq_testkit::TestDb;

/// A database with the reference extension; `None` (after the testkit's `SKIPPED` line) when it
/// is missing and not required.
async fn extension_db() -> anyhow::Result<Option<(TestDb, Client)>> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    if !pgq_testkit::reference_available(&client).await? {
        return Ok(None);
    }
    pgq_testkit::create_reference_extension(&client).await?;
    Ok(Some((db, client)))
}

/// [`extension_db`] with queue `q`, consumer `c` and `events` events ticked for it.
async fn queue_db(events: usize) -> anyhow::Result<Option<(TestDb, Client)>> {
    let Some((db, client)) = extension_db().await? else {
        return Ok(None);
    };
    client
        .batch_execute(
            "SELECT pgq.create_queue('q');
             SELECT pgq.register_consumer('q', 'c');",
        )
        .await?;
    produce(&client, "q", events).await?;
    Ok(Some((db, client)))
}

/// Everything a consumer's future depends on, as text, and the extension's presence: equal
/// before and after a refused migration; the queue state part equal across a migration.
async fn state(client: &Client) -> anyhow::Result<BTreeMap<&'static str, String>> {
    const PARTS: [(&str, &str); 7] = [
        (
            "queue",
            "SELECT queue_id, queue_name, queue_ntables, queue_cur_table, queue_rotation_period,
                    queue_switch_step1, queue_switch_step2, queue_switch_time,
                    queue_external_ticker, queue_disable_insert, queue_ticker_paused,
                    queue_ticker_max_count, queue_ticker_max_lag, queue_ticker_idle_period,
                    queue_per_tx_limit, queue_data_pfx, queue_event_seq, queue_tick_seq,
                    queue_extra_maint
               FROM pgq.queue ORDER BY queue_id",
        ),
        ("consumer", "SELECT * FROM pgq.consumer ORDER BY co_id"),
        (
            "subscription",
            "SELECT * FROM pgq.subscription ORDER BY sub_queue, sub_consumer",
        ),
        (
            "tick",
            "SELECT * FROM pgq.tick WHERE tick_queue = 1 ORDER BY tick_id",
        ),
        (
            "retry",
            "SELECT * FROM pgq.retry_queue ORDER BY ev_owner, ev_id",
        ),
        (
            "events",
            "SELECT tableoid::regclass, * FROM pgq.event_1 ORDER BY ev_id",
        ),
        (
            "sequences",
            "SELECT (SELECT last_value FROM pgq.batch_id_seq),
                    (SELECT last_value FROM pgq.event_1_id_seq),
                    (SELECT last_value FROM pgq.event_1_tick_seq),
                    (SELECT last_value FROM pgq.subscription_sub_id_seq)",
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, sql) in PARTS {
        let text: String = client
            .query_one(
                &format!("SELECT coalesce(string_agg(r::text, E'\\n'), '') FROM ({sql}) r"),
                &[],
            )
            .await
            .with_context(|| format!("reading {name}"))?
            .get(0);
        out.insert(name, text);
    }
    Ok(out)
}

/// The ids of the events of `consumer`'s next batch on `queue`, finished; `None` without one.
async fn take_batch(
    client: &Client,
    queue: &str,
    consumer: &str,
) -> anyhow::Result<Option<Vec<i64>>> {
    let batch: Option<i64> = client
        .query_one("SELECT pgq.next_batch($1, $2)", &[&queue, &consumer])
        .await?
        .get(0);
    let Some(batch) = batch else {
        return Ok(None);
    };
    let ids = batch_ids(client, batch).await?;
    client
        .query_one("SELECT pgq.finish_batch($1)", &[&batch])
        .await?;
    Ok(Some(ids))
}

async fn batch_ids(client: &Client, batch: i64) -> anyhow::Result<Vec<i64>> {
    Ok(client
        .query(
            "SELECT ev_id FROM pgq.get_batch_events($1) ORDER BY ev_id",
            &[&batch],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Every batch `consumer` can take now, its event ids in order.
async fn drain(client: &Client, queue: &str, consumer: &str) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    while let Some(batch) = take_batch(client, queue, consumer).await? {
        ids.extend(batch);
    }
    Ok(ids)
}

/// Inserts `n` events in one transaction and ticks; returns their ids.
async fn produce(client: &Client, queue: &str, n: usize) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    client.batch_execute("BEGIN").await?;
    for i in 0..n {
        let id: i64 = client
            .query_one(
                "SELECT pgq.insert_event($1, 'e', $2)",
                &[&queue, &format!("ev {i}")],
            )
            .await?
            .get(0);
        ids.push(id);
    }
    client.batch_execute("COMMIT").await?;
    tick(client, queue).await?;
    Ok(ids)
}

async fn newest_event(client: &Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT max(ev_id) FROM pgq.event_1", &[])
        .await?
        .get(0))
}

async fn tick(client: &Client, queue: &str) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "SELECT pgq.force_tick({q}); SELECT pgq.ticker({q});",
            q = pgq_core::quote_literal(queue)
        ))
        .await?;
    Ok(())
}

#[tokio::test]
async fn carries_queues_positions_open_batches_retries_and_triggers() -> anyhow::Result<()> {
    let Some((db, mut client)) = extension_db().await? else {
        return Ok(());
    };
    // pgq-rs's pgq_coop next to the extension (its sub-consumers live in pgq.subscription),
    // and pgq_ext with a batch recorded done (its own tables, which the move leaves alone).
    pgq_core::install(&mut client, &[Line::PgqCoop, Line::PgqExt]).await?;
    client
        .batch_execute("SELECT pgq_ext.set_batch_done('remote', 41)")
        .await?;
    client
        .batch_execute(
            "SELECT pgq.create_queue('q');
             SELECT pgq.set_queue_config('q', 'ticker_max_count', '7');
             SELECT pgq.create_queue('a \"queue\"; it''s odd');
             SELECT pgq.register_consumer('q', 'ahead');
             SELECT pgq.register_consumer('q', 'behind');
             SELECT pgq.register_consumer('q', 'open');
             SELECT pgq.register_consumer('q', 'retrying');
             SELECT pgq_coop.register_subconsumer('q', 'group', 'sub1');
             CREATE TABLE public.captured (id int PRIMARY KEY, v text);
             CREATE TRIGGER capture AFTER INSERT OR UPDATE ON public.captured
                 FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('q');
             CREATE TRIGGER capture_off AFTER DELETE ON public.captured
                 FOR EACH ROW EXECUTE FUNCTION pgq.sqltriga('q');
             ALTER TABLE public.captured DISABLE TRIGGER capture_off;",
        )
        .await?;
    let mut all = produce(&client, "q", 5).await?;
    client
        .batch_execute("INSERT INTO public.captured VALUES (1, 'one')")
        .await?;
    tick(&client, "q").await?;
    all.push(newest_event(&client).await?);
    let mut seen: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    seen.insert("ahead", drain(&client, "q", "ahead").await?);
    // 'retrying' hands its first event back with a delay, to be re-inserted after the move.
    let batch: i64 = client
        .query_one("SELECT pgq.next_batch('q', 'retrying')", &[])
        .await?
        .get(0);
    let first = batch_ids(&client, batch).await?;
    client
        .query_one("SELECT pgq.event_retry($1, $2, 0)", &[&batch, &first[0]])
        .await?;
    client
        .query_one("SELECT pgq.finish_batch($1)", &[&batch])
        .await?;
    seen.insert("retrying", first[1..].to_vec());
    all.extend(produce(&client, "q", 3).await?);
    // 'open' takes a batch and leaves it open; 'group' too, through its sub-consumer.
    let open: i64 = client
        .query_one("SELECT pgq.next_batch('q', 'open')", &[])
        .await?
        .get(0);
    let open_ids = batch_ids(&client, open).await?;
    let coop: i64 = client
        .query_one("SELECT pgq_coop.next_batch('q', 'group', 'sub1')", &[])
        .await?
        .get(0);
    let coop_ids = batch_ids(&client, coop).await?;
    let before = state(&client).await?;

    let report = pgq_core::migrate_from_extension(&mut client, MigrationOptions::new()).await?;
    assert_eq!(
        (
            report.queues,
            report.consumers,
            report.open_batches,
            report.retry_events,
            report.triggers
        ),
        // four consumers, the group and its sub-consumer
        (2, 6, 2, 1, 2),
        "{report}"
    );
    assert!(report.committed);
    assert_eq!(pgq_core::flavor(&client).await?, Flavor::Ours);
    pgq_core::check(
        &client,
        &[Line::Pgq, Line::PgqTriggers, Line::PgqCoop, Line::PgqExt],
    )
    .await?;
    let done: bool = client
        .query_one("SELECT pgq_ext.is_batch_done('remote', 41)", &[])
        .await?
        .get(0);
    assert!(done, "pgq_ext's state stays");
    let after = state(&client).await?;
    assert_eq!(before, after, "the queue state is carried over as it was");

    // The queue with an odd name takes events on the new schema.
    let odd = "a \"queue\"; it's odd";
    client
        .query_one("SELECT pgq.insert_event($1, 't', 'x')", &[&odd])
        .await?;
    tick(&client, odd).await?;
    let (odd_new,): (i64,) = {
        let row = client
            .query_one("SELECT ev_new FROM pgq.get_queue_info($1)", &[&odd])
            .await?;
        (row.get(0),)
    };
    assert_eq!(odd_new, 0, "the odd queue's event was ticked");

    // Open batches are finished on the new schema, with the same events.
    assert_eq!(batch_ids(&client, open).await?, open_ids);
    client
        .query_one("SELECT pgq.finish_batch($1)", &[&open])
        .await?;
    assert_eq!(batch_ids(&client, coop).await?, coop_ids);
    client
        .query_one("SELECT pgq_coop.finish_batch($1)", &[&coop])
        .await?;
    seen.insert("open", open_ids);
    seen.insert("group", coop_ids);

    // Traffic on the new schema: the capture trigger (remade, still enabled), insert_event,
    // the retry re-inserted by maintenance.
    client
        .batch_execute(
            "INSERT INTO public.captured VALUES (2, 'two');
             DELETE FROM public.captured WHERE id = 1;",
        )
        .await?;
    all.push(newest_event(&client).await?);
    all.extend(produce(&client, "q", 4).await?);
    client
        .execute(
            "UPDATE pgq.retry_queue SET ev_retry_after = now() - interval '1 second'",
            &[],
        )
        .await?;
    let moved: i32 = client
        .query_one("SELECT pgq.maint_retry_events()", &[])
        .await?
        .get(0);
    assert_eq!(moved, 1);
    tick(&client, "q").await?;
    let states: Vec<(String, String)> = client
        .query(
            "SELECT t.tgname::text, t.tgenabled::text FROM pg_trigger t
              WHERE t.tgrelid = 'public.captured'::regclass ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        states,
        [
            ("capture".to_owned(), "O".to_owned()),
            ("capture_off".to_owned(), "D".to_owned())
        ]
    );

    for consumer in ["ahead", "behind", "open", "retrying"] {
        let more = drain(&client, "q", consumer).await?;
        seen.entry(consumer).or_default().extend(more);
    }
    loop {
        let batch: Option<i64> = client
            .query_one("SELECT pgq_coop.next_batch('q', 'group', 'sub1')", &[])
            .await?
            .get(0);
        let Some(batch) = batch else { break };
        let ids = batch_ids(&client, batch).await?;
        client
            .query_one("SELECT pgq_coop.finish_batch($1)", &[&batch])
            .await?;
        seen.entry("group").or_default().extend(ids);
    }
    // The event 'retrying' handed back came back to it alone, with ev_retry = 1.
    let retried: i64 = client
        .query_one(
            "SELECT count(*) FROM pgq.event_1 e JOIN pgq.subscription s ON s.sub_id = e.ev_owner
               JOIN pgq.consumer c ON c.co_id = s.sub_consumer
              WHERE e.ev_retry = 1 AND c.co_name = 'retrying'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(retried, 1);
    for (consumer, ids) in &seen {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(&sorted, &all, "{consumer}: every event once");
    }
    let again = pgq_core::migrate_from_extension(&mut client, MigrationOptions::new()).await;
    assert!(
        matches!(
            again,
            Err(Error::MigrationRefused {
                refusal: Refusal::NoExtension,
                ..
            })
        ),
        "{again:?}"
    );
    drop(db);
    Ok(())
}

/// Migrates on `client` and expects `refusal`; then checks on `observer` that the database is
/// as it was.
async fn expect_refusal(
    client: &mut Client,
    observer: &Client,
    refusal: Refusal,
    before: &BTreeMap<&'static str, String>,
) -> anyhow::Result<()> {
    match pgq_core::migrate_from_extension(client, MigrationOptions::new()).await {
        Err(Error::MigrationRefused {
            refusal: got,
            problem,
            hint,
        }) => {
            assert_eq!(got, refusal, "{problem} ({hint})");
            assert!(
                !problem.is_empty() && !hint.is_empty(),
                "{refusal:?}: {problem}"
            );
        }
        other => panic!("expected a {refusal:?} refusal, got {other:?}"),
    }
    assert_eq!(
        &state(observer).await?,
        before,
        "{refusal:?} changed the queue"
    );
    assert_eq!(pgq_core::flavor(observer).await?, Flavor::Extension);
    Ok(())
}

#[tokio::test]
async fn refusals_change_nothing() -> anyhow::Result<()> {
    let Some((db, mut client)) = queue_db(3).await? else {
        return Ok(());
    };
    let before = state(&client).await?;

    let causes: [(Refusal, &str, &str); 5] = [
        (
            Refusal::Londiste3,
            "CREATE EXTENSION londiste CASCADE",
            "DROP EXTENSION londiste; DROP EXTENSION pgq_node;",
        ),
        (
            Refusal::ForeignCoop,
            "CREATE SCHEMA pgq_coop",
            "DROP SCHEMA pgq_coop",
        ),
        (
            Refusal::DependentObjects,
            "CREATE VIEW public.queues AS SELECT queue_name FROM pgq.queue",
            "DROP VIEW public.queues",
        ),
        (
            Refusal::UnusualQueue,
            "ALTER TABLE pgq.event_1_2 NO INHERIT pgq.event_1",
            "ALTER TABLE pgq.event_1_2 INHERIT pgq.event_1",
        ),
        (
            Refusal::Cascaded,
            "CREATE EXTENSION pgq_node",
            "DROP EXTENSION pgq_node",
        ),
    ];
    for (refusal, make, mend) in causes {
        client.batch_execute(make).await?;
        let observer = db.client().await?;
        expect_refusal(&mut client, &observer, refusal, &before).await?;
        client.batch_execute(mend).await?;
    }

    // Bookkeeping that another role controls (its triggers would run with our rights).
    pgq_testkit::create_role(&client, "pgq_migrate_squatter", "NOLOGIN").await?;
    client
        .batch_execute("CREATE SCHEMA pgq_rs AUTHORIZATION pgq_migrate_squatter")
        .await?;
    let squatted = pgq_core::migrate_from_extension(&mut client, MigrationOptions::new()).await;
    assert!(
        matches!(squatted, Err(Error::UntrustedInstallation { .. })),
        "{squatted:?}"
    );
    assert_eq!(state(&client).await?, before);
    client.batch_execute("DROP SCHEMA pgq_rs").await?;

    // A role that does not own the extension, even one that may use the queue.
    pgq_testkit::create_role(&client, "pgq_migrate_stranger", "LOGIN IN ROLE pgq_admin").await?;
    let mut stranger = Dsn::parse(&db.dsn_as("pgq_migrate_stranger"))?
        .connect()
        .await?;
    expect_refusal(&mut stranger, &client, Refusal::NotOwner, &before).await?;

    // A transaction that sits on a queue table past the lock timeout: given up, nothing changed.
    let idle = db.client().await?;
    idle.batch_execute("BEGIN; SELECT count(*) FROM pgq.queue;")
        .await?;
    let waited = pgq_core::migrate_from_extension(
        &mut client,
        MigrationOptions::new().lock_timeout(std::time::Duration::from_millis(200)),
    )
    .await;
    assert!(
        matches!(&waited, Err(e) if e.sql_state() == Some(&SqlState::LOCK_NOT_AVAILABLE)),
        "{waited:?}"
    );
    assert_eq!(state(&idle).await?, before);
    idle.batch_execute("COMMIT").await?;

    // A dry run does it all and keeps nothing.
    let dry = pgq_core::migrate_from_extension(&mut client, MigrationOptions::new().dry_run(true))
        .await?;
    assert!(!dry.committed && dry.queues == 1, "{dry}");
    assert_eq!(state(&client).await?, before);
    assert_eq!(pgq_core::flavor(&client).await?, Flavor::Extension);

    // Once the causes are gone, the same database moves over and the consumer goes on.
    pgq_core::migrate_from_extension(&mut client, MigrationOptions::new()).await?;
    assert_eq!(state(&client).await?, before);
    assert_eq!(drain(&client, "q", "c").await?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn no_extension_is_refused() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    let refused = pgq_core::migrate_from_extension(&mut client, MigrationOptions::new()).await;
    assert!(
        matches!(
            refused,
            Err(Error::MigrationRefused {
                refusal: Refusal::NoExtension,
                ..
            })
        ),
        "{refused:?}"
    );
    Ok(())
}

/// A database owner's look-alikes first in the search_path catch nothing the migration runs.
#[tokio::test]
async fn hostile_search_path_catches_nothing() -> anyhow::Result<()> {
    let Some((db, _)) = queue_db(2).await? else {
        return Ok(());
    };
    pgq_testkit::shadow_builtins(&db).await?;
    let mut fresh = db.client().await?;
    let path: String = fresh.query_one("SHOW search_path", &[]).await?.get(0);
    assert!(path.starts_with("evil"), "{path}");
    fresh.batch_execute("DELETE FROM evil.calls").await?;
    pgq_core::migrate_from_extension(&mut fresh, MigrationOptions::new()).await?;
    assert_eq!(
        pgq_testkit::shadow_calls(&fresh).await?,
        Vec::<String>::new()
    );
    assert_eq!(drain(&fresh, "q", "c").await?.len(), 2);
    Ok(())
}
