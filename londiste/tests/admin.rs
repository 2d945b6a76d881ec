//! resync, sequences, remove-table, status, and early flushes under a small memory limit.

use londiste::{AddTableOptions, Config, ResyncOptions, TableState, Worker};
use pgq_core::{ConsumerName, Dsn, QueueName};
use pgq_testkit::TestDb;
use tokio_postgres::Row;

use crate::common::Pair;

#[tokio::test]
async fn resync_sequences_and_remove_table() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE r (id serial PRIMARY KEY, v text);")
        .await?;
    pair.provider
        .batch_execute("INSERT INTO r (v) SELECT 'v' || g FROM generate_series(1, 300) g;")
        .await?;
    londiste::add_tables(&pair.config, &["r".to_owned()], &AddTableOptions::default()).await?;
    londiste::add_sequences(&pair.config, &["r_id_seq".to_owned()]).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    let next: i64 = pair
        .subscriber
        .query_one("SELECT nextval('r_id_seq')", &[])
        .await?
        .get(0);
    assert_eq!(next, 301, "the sequence follows the provider's");

    // The subscriber drifts; resync copies the table again and it catches up.
    pair.subscriber
        .batch_execute("DELETE FROM r WHERE id < 100; UPDATE r SET v = 'drift'")
        .await?;
    pair.provider
        .batch_execute("UPDATE r SET v = 'new' WHERE id = 5")
        .await?;
    drop(worker);
    let options = ResyncOptions {
        parallel_copy: 2,
        ..ResyncOptions::default()
    };
    let resynced = londiste::resync(&pair.config, "r", &options).await?;
    assert_eq!(
        (resynced.rows, resynced.state),
        (300, TableState::CatchingUp)
    );
    assert_eq!(
        (options.progress.table(), options.progress.rows()),
        ("public.r".to_owned(), 300),
        "the copy's counters"
    );
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    pair.assert_same("r", "id").await?;
    let status = londiste::status(&pair.config).await?;
    assert!(status.worker_running);
    assert_eq!(status.tables.len(), 1);
    assert_eq!(status.tables[0].state, TableState::Ok);

    londiste::remove_table(&pair.config, "r").await?;
    pair.provider
        .batch_execute("INSERT INTO r (v) VALUES ('after')")
        .await?;
    pair.drain(&mut worker).await?;
    let rows: i64 = pair
        .subscriber
        .query_one("SELECT count(*) FROM r", &[])
        .await?
        .get(0);
    assert_eq!(rows, 300, "a removed table is no longer replicated");
    let triggers: i64 = pair
        .provider
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'r'::regclass AND NOT tgisinternal",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(triggers, 0);
    let err = londiste::remove_table(&pair.config, "r").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "table public.r: is not replicated by queue replica"
    );
    Ok(())
}

#[tokio::test]
async fn a_tiny_memory_limit_flushes_early_with_the_same_result() -> anyhow::Result<()> {
    let mut pair = Pair::new().await?;
    pair.config.memory_limit = 1;
    pair.config.chunk_size = 7;
    pair.both("CREATE TABLE f (id int PRIMARY KEY, v int);")
        .await?;
    londiste::add_tables(&pair.config, &["f".to_owned()], &AddTableOptions::default()).await?;
    pair.provider
        .batch_execute(
            "INSERT INTO f SELECT g, g FROM generate_series(1, 200) g;
             UPDATE f SET v = v + 1 WHERE id % 3 = 0;
             DELETE FROM f WHERE id % 5 = 0;
             INSERT INTO f SELECT g, 0 FROM generate_series(5, 200, 5) g;
             UPDATE f SET v = -v WHERE id > 150;",
        )
        .await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same("f", "id").await?, 200);
    Ok(())
}

/// A queue name and key values with backslashes and quotes reach the provider's trigger
/// arguments, bookkeeping and parallel copy ranges intact on a provider whose sessions default
/// to `standard_conforming_strings = off`, where literals quoted for `on` read back otherwise
/// (this name would end its literal early and run the rest as SQL).
#[tokio::test]
async fn backslashes_and_quotes_under_nonstandard_strings() -> anyhow::Result<()> {
    let provider_db = TestDb::new().await?;
    let subscriber_db = TestDb::new().await?;
    let admin = provider_db.client().await?;
    let version: i32 = admin
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await?
        .get(0);
    if version >= 190_000 {
        // PostgreSQL 19 has no other setting than `on`.
        return Ok(());
    }
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET standard_conforming_strings = off",
            pgq_core::quote_ident(provider_db.name())
        ))
        .await?;
    let queue = r"q\'; DROP TABLE t; --";
    let config = Config::new(
        Dsn::parse(&provider_db.dsn())?,
        Dsn::parse(&subscriber_db.dsn())?,
        QueueName::new(queue)?,
        Some(ConsumerName::new("worker")?),
    );
    londiste::init(&config).await?;
    let provider = provider_db.client().await?;
    let subscriber = subscriber_db.client().await?;
    for client in [&provider, &subscriber] {
        client
            .batch_execute("CREATE TABLE t (k text PRIMARY KEY, v int)")
            .await?;
    }
    provider
        .batch_execute(r"INSERT INTO t SELECT E'k\\' || g || '''', g FROM generate_series(1, 40) g")
        .await?;

    let options = AddTableOptions {
        parallel_copy: 3,
        ..AddTableOptions::default()
    };
    londiste::add_tables(&config, &["t".to_owned()], &options).await?;
    let read = "SELECT k, v FROM t ORDER BY k";
    let rows = |rows: Vec<Row>| -> Vec<(String, i32)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let on_provider = rows(provider.query(read, &[]).await?);
    assert_eq!(on_provider.len(), 40);
    assert_eq!(on_provider[0], (r"k\1'".to_owned(), 1));
    assert_eq!(rows(subscriber.query(read, &[]).await?), on_provider);

    let registered: Vec<(String, String)> = provider
        .query(
            "SELECT queue_name, table_name FROM londiste_rs.provider_table",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(registered, [(queue.to_owned(), "public.t".to_owned())]);
    let trigger_args: Vec<Vec<u8>> = provider
        .query(
            "SELECT tgargs FROM pg_catalog.pg_trigger
              WHERE tgrelid = 't'::regclass AND NOT tgisinternal ORDER BY tgname",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // tgargs: each argument followed by a NUL.
    let expected = format!("{queue}\0").into_bytes();
    assert_eq!(trigger_args, [expected.clone(), expected]);

    londiste::remove_table(&config, "t").await?;
    let left: i64 = provider
        .query_one(
            "SELECT (SELECT count(*) FROM londiste_rs.provider_table)
                  + (SELECT count(*) FROM pg_catalog.pg_trigger
                      WHERE tgrelid = 't'::regclass AND NOT tgisinternal)",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(left, 0, "remove-table found the row and the triggers");
    Ok(())
}
