//! Replication end to end: copy, catch up, merge semantics, compare.

use londiste::{AddTableOptions, TableState, Worker};

use crate::common::Pair;

#[tokio::test]
async fn a_table_is_copied_and_its_changes_replayed_merged() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.provider
        .batch_execute(
            "CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL, note text);
             INSERT INTO acc SELECT g, g * 10, 'n' || g FROM generate_series(1, 1000) g;",
        )
        .await?;
    let options = AddTableOptions {
        create: true,
        ..AddTableOptions::default()
    };
    let added = londiste::add_tables(&pair.config, &["acc".to_owned()], &options).await?;
    assert_eq!(
        (added[0].table.as_str(), added[0].rows),
        ("public.acc", 1000)
    );
    assert_eq!(added[0].state, TableState::CatchingUp);
    assert_eq!(
        (options.progress.table(), options.progress.rows()),
        ("public.acc".to_owned(), 1000),
        "the copy's counters"
    );
    pair.assert_same("acc", "id").await?;

    // One batch holding every merge case.
    pair.provider
        .batch_execute(
            "INSERT INTO acc VALUES (2001, 1, 'new');           -- insert then updates: one insert
             UPDATE acc SET bal = 2 WHERE id = 2001;
             UPDATE acc SET note = 'x' WHERE id = 2001;
             UPDATE acc SET bal = bal + 1 WHERE id = 5;        -- updates: one update
             UPDATE acc SET bal = bal + 1 WHERE id = 5;
             INSERT INTO acc VALUES (2002, 1, 'gone');         -- insert then delete: nothing
             DELETE FROM acc WHERE id = 2002;
             DELETE FROM acc WHERE id = 7;                     -- delete then insert: update
             INSERT INTO acc VALUES (7, 777, 'back');
             UPDATE acc SET note = NULL WHERE id = 8;          -- update then delete: delete
             DELETE FROM acc WHERE id = 8;
             DELETE FROM acc WHERE id BETWEEN 100 AND 199;",
        )
        .await?;
    let mut worker = Worker::connect(&pair.config).await?;
    assert!(pair.drain(&mut worker).await? >= 1);
    assert_eq!(pair.assert_same("acc", "id").await?, 1000 - 100 - 1 + 1);
    assert_eq!(pair.state("public.acc").await?, Some(TableState::Ok));

    // No worker runs: compare applies the batches up to its tick itself.
    drop(worker);
    pair.provider
        .batch_execute("UPDATE acc SET bal = 0 WHERE id = 1")
        .await?;
    let compared = londiste::compare(&pair.config, Some("acc")).await?;
    assert!(compared[0].equal(), "{compared:?}");
    assert_eq!(compared[0].provider_rows, 900);
    let bal: i32 = pair
        .subscriber
        .query_one("SELECT bal FROM acc WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(bal, 0);
    let mut worker = Worker::connect(&pair.config).await?;

    // TRUNCATE replicates too.
    pair.provider
        .batch_execute("TRUNCATE acc; INSERT INTO acc VALUES (1, 1, 'one');")
        .await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same("acc", "id").await?, 1);
    Ok(())
}

#[tokio::test]
async fn per_event_apply_gives_the_same_result() -> anyhow::Result<()> {
    let mut pair = Pair::new().await?;
    pair.config.apply = londiste::ApplyMode::PerEvent;
    pair.both("CREATE TABLE t (a int, b text, c int, PRIMARY KEY (b, a));")
        .await?;
    pair.provider
        .batch_execute(
            "INSERT INTO t SELECT g % 7, 'k' || (g / 7), g FROM generate_series(1, 500) g;",
        )
        .await?;
    londiste::add_tables(&pair.config, &["t".to_owned()], &AddTableOptions::default()).await?;
    pair.provider
        .batch_execute(
            "UPDATE t SET c = c * 2 WHERE a = 3; DELETE FROM t WHERE a = 4;
             INSERT INTO t VALUES (100, 'z', 1); UPDATE t SET c = 5 WHERE a = 100;",
        )
        .await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    pair.assert_same("t", "a, b").await?;
    Ok(())
}

#[tokio::test]
async fn a_unique_violation_on_other_columns_falls_back_to_per_event() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE);")
        .await?;
    pair.provider
        .batch_execute("INSERT INTO u VALUES (1, 'a'), (2, 'b');")
        .await?;
    londiste::add_tables(&pair.config, &["u".to_owned()], &AddTableOptions::default()).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    // Swapping two unique values: a set-based UPDATE of the net rows conflicts midway.
    pair.provider
        .batch_execute(
            "UPDATE u SET email = 'tmp' WHERE id = 1;
             UPDATE u SET email = 'a' WHERE id = 2;
             UPDATE u SET email = 'b' WHERE id = 1;",
        )
        .await?;
    pair.drain(&mut worker).await?;
    pair.assert_same("u", "id").await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_row_fails_the_batch_naming_the_key() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE m (id int PRIMARY KEY, v int);")
        .await?;
    pair.provider
        .batch_execute("INSERT INTO m SELECT g, g FROM generate_series(1, 10) g;")
        .await?;
    londiste::add_tables(&pair.config, &["m".to_owned()], &AddTableOptions::default()).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    pair.subscriber
        .batch_execute("DELETE FROM m WHERE id = 4")
        .await?;
    pair.provider
        .batch_execute("UPDATE m SET v = 0 WHERE id IN (3, 4)")
        .await?;
    pair.tick().await?;
    let err = worker.process_next_batch().await.unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(
        text.contains("public.m: update expected 2 rows, changed 1; keys: (4) (not found)"),
        "{text}"
    );
    // Nothing of the batch was applied.
    let v: i32 = pair
        .subscriber
        .query_one("SELECT v FROM m WHERE id = 3", &[])
        .await?
        .get(0);
    assert_eq!(v, 3);
    Ok(())
}

/// An application role with no pgq role at all writes the replicated table: its changes are
/// captured (the registered capture trigger inserts with the schema owner's rights) and
/// replayed; it still cannot put an event into the queue itself.
#[tokio::test]
async fn writers_of_a_replicated_table_need_no_pgq_role() -> anyhow::Result<()> {
    const APP: &str = "pgqt_londiste_app";
    let pair = Pair::new().await?;
    pgq_testkit::create_role(&pair.provider, APP, "LOGIN").await?;
    pair.provider
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, amount int);
             GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {APP};"
        ))
        .await?;
    let options = AddTableOptions {
        create: true,
        ..AddTableOptions::default()
    };
    londiste::add_tables(&pair.config, &["orders".to_owned()], &options).await?;
    let app = pair.config.provider.with_user(APP).connect().await?;
    app.batch_execute(
        "INSERT INTO orders VALUES (1, 10), (2, 20);
         UPDATE orders SET amount = 11 WHERE id = 1;
         DELETE FROM orders WHERE id = 2;",
    )
    .await?;
    let forged = app
        .batch_execute(&format!(
            "SELECT pgq.insert_event('{}', 'I:id', 'id=666&amount=1', 'public.orders', NULL, \
             NULL, NULL)",
            pair.config.queue
        ))
        .await
        .expect_err("no right to insert events");
    assert_eq!(
        forged.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same("orders", "id").await?, 1);
    let amount: i32 = pair
        .subscriber
        .query_one("SELECT amount FROM orders WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(amount, 11);
    Ok(())
}

/// A table copied with a condition stays filtered: changes outside it are no failures, a row
/// that comes to match is inserted, one that stops matching is deleted. Also applied event by
/// event (`apply = "per-event"`), and after a resync.
#[tokio::test]
async fn a_filtered_table_stays_filtered() -> anyhow::Result<()> {
    for mode in [londiste::ApplyMode::Batch, londiste::ApplyMode::PerEvent] {
        let mut pair = Pair::new().await?;
        pair.config.apply = mode;
        pair.provider
            .batch_execute(
                "CREATE TABLE shop (id int PRIMARY KEY, region text, qty int);
                 INSERT INTO shop SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g
                   FROM generate_series(1, 100) g;",
            )
            .await?;
        let options = AddTableOptions {
            create: true,
            copy_condition: Some("region = 'eu'".to_owned()),
            ..AddTableOptions::default()
        };
        let added = londiste::add_tables(&pair.config, &["shop".to_owned()], &options).await?;
        assert_eq!(added[0].rows, 50);
        pair.provider
            .batch_execute(
                "UPDATE shop SET qty = -1 WHERE id = 1;              -- outside: nothing
                 DELETE FROM shop WHERE id = 3;                      -- outside: nothing
                 INSERT INTO shop VALUES (101, 'us', 1);             -- outside: nothing
                 UPDATE shop SET region = 'eu' WHERE id = 5;         -- comes in: inserted
                 UPDATE shop SET region = 'us' WHERE id = 2;         -- goes out: deleted
                 UPDATE shop SET qty = 0 WHERE id = 4;               -- inside: updated
                 INSERT INTO shop VALUES (102, 'eu', 2);             -- inside: inserted
                 DELETE FROM shop WHERE id = 6;                      -- inside: deleted
                 INSERT INTO shop VALUES (103, 'eu', 3);             -- in, then out again
                 UPDATE shop SET region = NULL WHERE id = 103;",
            )
            .await?;
        let mut worker = Worker::connect(&pair.config).await?;
        pair.drain(&mut worker).await?;
        let filtered = "(SELECT * FROM shop WHERE region = 'eu')";
        let expected = Pair::md5(&pair.provider, filtered, "id").await?;
        assert_eq!(expected.0, 50, "{mode:?}");
        assert_eq!(
            Pair::md5(&pair.subscriber, "shop", "id").await?,
            expected,
            "{mode:?}"
        );

        // A resync copies with the same condition.
        pair.subscriber.batch_execute("DELETE FROM shop").await?;
        let resynced =
            londiste::resync(&pair.config, "shop", &londiste::ResyncOptions::default()).await?;
        assert_eq!(resynced.rows, 50);
        pair.drain(&mut worker).await?;
        assert_eq!(
            Pair::md5(&pair.subscriber, "shop", "id").await?,
            expected,
            "{mode:?}"
        );
    }
    Ok(())
}

/// `compare --rows` names the keys that differ, `repair` makes them equal at one tick and
/// says what it changed; writes go on meanwhile.
#[tokio::test]
async fn compare_finds_the_rows_and_repair_mends_them() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.provider
        .batch_execute(
            "CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL, note text);
             INSERT INTO acc SELECT g, g, 'n' || g FROM generate_series(1, 5000) g;",
        )
        .await?;
    let options = AddTableOptions {
        create: true,
        ..AddTableOptions::default()
    };
    londiste::add_tables(&pair.config, &["acc".to_owned()], &options).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    drop(worker);
    pair.subscriber
        .batch_execute(
            "DELETE FROM acc WHERE id IN (7, 4000);
             UPDATE acc SET note = 'drifted' WHERE id = 12;
             INSERT INTO acc VALUES (9001, 0, 'stray');",
        )
        .await?;
    // The provider goes on: these are replayed before both sides are read.
    pair.provider
        .batch_execute(
            "UPDATE acc SET bal = -1 WHERE id = 13; INSERT INTO acc VALUES (6000, 1, 'late')",
        )
        .await?;
    let diffs = londiste::compare_rows(&pair.config, Some("acc")).await?;
    assert_eq!(diffs.len(), 1);
    let d = &diffs[0];
    assert_eq!(
        (&d.missing, &d.extra, &d.different, d.repaired),
        (
            &vec!["(4000)".to_owned(), "(7)".to_owned()],
            &vec!["(9001)".to_owned()],
            &vec!["(12)".to_owned()],
            false
        )
    );
    let dir = pgq_testkit::TempDir::new("londiste-repair")?;
    let file = pair.write_config(&dir, "")?;
    let cli = |args: &'static [&'static str]| {
        let file = file.display().to_string();
        async move {
            let mut argv = vec!["--config", file.as_str()];
            argv.extend(args);
            pgq_testkit::run(env!("CARGO_BIN_EXE_londiste"), &argv).await
        }
    };
    let (code, stdout, _) = cli(&["compare", "--rows", "acc"]).await?;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("missing 2: (4000) (7)"), "{stdout}");
    let repaired = londiste::repair(&pair.config, None).await?;
    assert!(repaired[0].repaired);
    assert_eq!(
        repaired[0].missing.len() + repaired[0].extra.len() + repaired[0].different.len(),
        4
    );
    pair.assert_same("acc", "id").await?;
    let again = londiste::compare_rows(&pair.config, None).await?;
    assert!(again.iter().all(londiste::RowDiff::equal), "{again:?}");
    let (code, stdout, _) = cli(&["compare", "--rows"]).await?;
    assert_eq!(code, 0, "{stdout}");
    Ok(())
}

/// A worker behind by several ticks takes them as one batch (`catch_up_events`); while
/// `compare` holds it at a tick, it takes one tick at a time and stops exactly there.
#[tokio::test]
async fn a_worker_behind_takes_ticks_together_but_stops_at_a_held_tick() -> anyhow::Result<()> {
    let mut pair = Pair::new().await?;
    pair.config.catch_up_events = 50;
    pair.provider
        .batch_execute(
            "CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL);
             INSERT INTO acc SELECT g, 0 FROM generate_series(1, 100) g;",
        )
        .await?;
    let options = AddTableOptions {
        create: true,
        ..AddTableOptions::default()
    };
    londiste::add_tables(&pair.config, &["acc".to_owned()], &options).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    let position = "SELECT last_tick FROM londiste_rs.worker_position";
    let newest = "SELECT max(tick_id) FROM pgq.tick";
    // Ticks by the tick rule, as a ticker makes them: a forced tick moves the event sequence
    // on, so every forced tick would look like a batch of its own.
    pair.provider
        .batch_execute("SELECT pgq.set_queue_config('replica', 'ticker_max_lag', '0')")
        .await?;
    let tick = || pgq_core::ticker(&pair.provider, &pair.config.queue);

    // Five ticks of 20 events each: 100 wait, at least 50, so one batch takes them all.
    let mut ticks = Vec::new();
    for _ in 0..5 {
        pair.provider
            .batch_execute("UPDATE acc SET bal = bal + 1 WHERE id <= 20")
            .await?;
        tick().await?;
        ticks.push(pair.provider.query_one(newest, &[]).await?.get::<_, i64>(0));
    }
    assert!(worker.process_next_batch().await?.is_some());
    let reached: i64 = pair.subscriber.query_one(position, &[]).await?.get(0);
    assert_eq!(reached, ticks[4], "one batch spans the five ticks");
    pair.assert_same("acc", "id").await?;

    // The same again, held at the third tick as compare holds it: a tick per batch up to it.
    ticks.clear();
    for _ in 0..5 {
        pair.provider
            .batch_execute("UPDATE acc SET bal = bal + 1 WHERE id > 80")
            .await?;
        tick().await?;
        ticks.push(pair.provider.query_one(newest, &[]).await?.get::<_, i64>(0));
    }
    pair.subscriber
        .execute(
            "UPDATE londiste_rs.worker_position SET pause_requested = true, pause_at_tick = $1",
            &[&ticks[2]],
        )
        .await?;
    while let Ok(Some(_)) = worker.process_next_batch().await {}
    let reached: i64 = pair.subscriber.query_one(position, &[]).await?.get(0);
    assert_eq!(reached, ticks[2], "the worker stops at the held tick");
    pair.subscriber
        .batch_execute(
            "UPDATE londiste_rs.worker_position SET pause_requested = false, pause_at_tick = NULL",
        )
        .await?;
    pair.drain(&mut worker).await?;
    pair.assert_same("acc", "id").await?;
    Ok(())
}
