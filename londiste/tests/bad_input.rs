//! Bad input gets a clear error and changes nothing.

use std::time::Duration;

use londiste::{AddTableOptions, Worker};
use pgq_consumer::CancellationToken;
use pgq_testkit::{Deadline, TempDir};

use crate::common::Pair;

#[tokio::test]
async fn a_table_without_primary_key_is_refused() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE nokey (a int, b text);").await?;
    let err = londiste::add_tables(
        &pair.config,
        &["nokey".to_owned()],
        &AddTableOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table public.nokey has no primary key: londiste needs one to apply updates and deletes"
    );
    let triggers: i64 = pair
        .provider
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'nokey'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(triggers, 0);
    let err = londiste::add_tables(
        &pair.config,
        &["missing".to_owned()],
        &AddTableOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "provider: table missing does not exist");
    Ok(())
}

#[tokio::test]
async fn a_subscriber_table_with_other_columns_is_refused_naming_the_column() -> anyhow::Result<()>
{
    let pair = Pair::new().await?;
    pair.provider
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, amount numeric, \"Note\" text);")
        .await?;
    pair.subscriber
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, amount numeric, note text);")
        .await?;
    let err = londiste::add_tables(&pair.config, &["t".to_owned()], &AddTableOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "subscriber table public.t does not match provider table public.t: column \"Note\" (text) is missing on the subscriber"
    );
    assert!(londiste::tables(&pair.config).await?.is_empty());
    Ok(())
}

/// Ticks until the subscriber's `t` has `rows` rows.
async fn replicated(pair: &Pair, rows: i64, what: &str) -> anyhow::Result<()> {
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let n: i64 = pair
            .subscriber
            .query_one("SELECT count(*) FROM t", &[])
            .await?
            .get(0);
        if n == rows {
            return Ok(());
        }
        pair.tick().await?;
        deadline.pause(what).await?;
    }
}

#[tokio::test]
async fn the_worker_survives_the_provider_going_away() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE t (id int PRIMARY KEY, v int);")
        .await?;
    londiste::add_tables(&pair.config, &["t".to_owned()], &AddTableOptions::default()).await?;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(Worker::connect(&pair.config).await?.run(cancel.clone()));
    pair.provider
        .batch_execute("INSERT INTO t VALUES (1, 1)")
        .await?;
    pair.tick().await?;
    replicated(&pair, 1, "the worker to apply the first row").await?;
    // Cut every other connection to the provider, the worker's included.
    pair.provider
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await?;
    pair.provider
        .batch_execute("INSERT INTO t VALUES (2, 2)")
        .await?;
    pair.tick().await?;
    replicated(&pair, 2, "the worker to come back").await?;
    assert!(!worker.is_finished(), "the worker stopped");
    cancel.cancel();
    worker.await??;
    pair.assert_same("t", "id").await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_config_names_file_line_and_key() -> anyhow::Result<()> {
    let dir = TempDir::new("londiste-bad")?;
    let file = dir.write(
        "londiste.toml",
        "[londiste]\nprovider = \"host=a user=u\"\nsubscriber = \"host=b user=u\"\nqueue = \"q\"\n\n[worker]\nchunk_size = -1\n",
    )?;
    let (code, _, stderr) = pgq_testkit::run(
        env!("CARGO_BIN_EXE_londiste"),
        &["--config", file.to_str().unwrap_or_default(), "status"],
    )
    .await?;
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("{}:7:14: worker.chunk_size:", file.display())),
        "{stderr}"
    );
    Ok(())
}

/// Every command answers `--json` with JSON.
#[tokio::test]
async fn every_command_speaks_json() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE SEQUENCE s")
        .await?;
    pair.provider
        .batch_execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        .await?;
    let dir = TempDir::new("londiste-json")?;
    let file = pair.write_config(&dir, "")?;
    let run = |args: &'static [&'static str]| {
        let file = file.display().to_string();
        async move {
            let mut argv = vec!["--config", file.as_str(), "--json"];
            argv.extend(args);
            let (code, stdout, stderr) =
                pgq_testkit::run(env!("CARGO_BIN_EXE_londiste"), &argv).await?;
            anyhow::ensure!(code == 0, "{args:?}: {stderr}");
            serde_json::from_str::<serde_json::Value>(&stdout)
                .map_err(|e| anyhow::anyhow!("{args:?} printed no JSON ({e}): {stdout}"))
        }
    };
    assert_eq!(run(&["init"]).await?["consumer"], "worker");
    let added = run(&["add-table", "public.t", "--wait", "0"]).await?;
    assert_eq!(added[0]["rows"], 2);
    let resynced = run(&["resync", "public.t", "--wait", "0"]).await?;
    assert_eq!(
        (&resynced["table"], &resynced["rows"]),
        (&"public.t".into(), &2.into())
    );
    assert_eq!(run(&["add-seq", "public.s"]).await?["added"][0], "public.s");
    assert_eq!(run(&["tables"]).await?[0]["table"], "public.t");
    assert_eq!(
        run(&["remove-table", "public.t"]).await?["removed"][0],
        "public.t"
    );
    assert_eq!(run(&["tables"]).await?, serde_json::json!([]));
    Ok(())
}

/// A second subscriber that takes a consumer name another subscriber uses would share its
/// batches: refused, and the first keeps replicating. Running `init` again on the first is fine.
#[tokio::test]
async fn a_consumer_name_in_use_by_another_subscriber_is_refused() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await?;
    londiste::add_tables(&pair.config, &["t".to_owned()], &AddTableOptions::default()).await?;
    let err = pair
        .second_subscriber("worker")
        .await
        .expect_err("a taken consumer name");
    assert_eq!(
        err.to_string(),
        "consumer worker is registered on queue replica by another subscriber: give this \
         subscriber its own `consumer` in the config (or leave it out for the default)"
    );
    assert_eq!(londiste::init(&pair.config).await?.as_str(), "worker");
    let consumers: i64 = pair
        .provider
        .query_one("SELECT count(*) FROM pgq.get_consumer_info('replica')", &[])
        .await?
        .get(0);
    assert_eq!(consumers, 1);
    pair.provider
        .batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 10) g")
        .await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same("t", "id").await?, 10);
    Ok(())
}

/// `compare` and `repair` match rows by primary key: a table that lost its key on either side
/// is refused, and no row changes.
#[tokio::test]
async fn repair_refuses_a_table_without_a_primary_key() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE t (id int CONSTRAINT t_key PRIMARY KEY, v int)")
        .await?;
    pair.provider
        .batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 10) g")
        .await?;
    londiste::add_tables(&pair.config, &["t".to_owned()], &AddTableOptions::default()).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    drop(worker);
    pair.subscriber
        .batch_execute("ALTER TABLE t DROP CONSTRAINT t_key; INSERT INTO t VALUES (1, 1)")
        .await?;
    let before = Pair::md5(&pair.subscriber, "t", "id, v").await?;
    let err = londiste::repair(&pair.config, Some("t"))
        .await
        .expect_err("no key on the subscriber");
    assert_eq!(
        err.to_string(),
        "subscriber table public.t does not match provider table public.t: primary key () on \
         the subscriber, (id) on the provider: rows cannot be matched"
    );
    assert_eq!(Pair::md5(&pair.subscriber, "t", "id, v").await?, before);

    pair.subscriber
        .batch_execute(
            "DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1, 1);
             ALTER TABLE t ADD CONSTRAINT t_key PRIMARY KEY (id)",
        )
        .await?;
    pair.provider
        .batch_execute("ALTER TABLE t DROP CONSTRAINT t_key")
        .await?;
    let err = londiste::repair(&pair.config, Some("t"))
        .await
        .expect_err("no key on the provider");
    assert_eq!(
        err.to_string(),
        "table public.t has no primary key: londiste needs one to apply updates and deletes"
    );
    assert_eq!(pair.assert_same("t", "id").await?, 10);
    Ok(())
}
