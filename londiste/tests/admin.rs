//! resync, sequences, remove-table, status, and early flushes under a small memory limit.

use londiste::{AddTableOptions, Worker};

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
    let resynced = londiste::resync(&pair.config, "r", 2, std::time::Duration::ZERO).await?;
    assert_eq!(
        (resynced.rows, resynced.state.as_str()),
        (300, "catching-up")
    );
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    pair.assert_same("r", "id").await?;
    let status = londiste::status(&pair.config).await?;
    assert!(status.worker_running);
    assert_eq!(status.tables.len(), 1);
    assert_eq!(status.tables[0].state, "ok");

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
