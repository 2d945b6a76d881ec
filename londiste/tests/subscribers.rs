//! Several subscribers on one queue, each with its own tables.

use std::time::Duration;

use londiste::{AddTableOptions, Config, TableState, Worker};
use pgq_consumer::CancellationToken;
use pgq_testkit::Deadline;
use tokio_postgres::Client;

use crate::common::{pgbench_init, pgbench_load, Pair};

/// Runs a worker until the token fires.
fn run(config: &Config, cancel: &CancellationToken) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (config, cancel) = (config.clone(), cancel.clone());
    tokio::spawn(async move {
        Worker::connect(&config).await?.run(cancel).await?;
        Ok(())
    })
}

/// Waits until the subscriber's worker has applied every event there is.
async fn caught_up(config: &Config, provider: &Client) -> anyhow::Result<()> {
    let deadline = Deadline::after(Duration::from_secs(120));
    loop {
        pgq_core::force_tick(provider, &config.queue).await?;
        pgq_core::ticker(provider, &config.queue).await?;
        if londiste::status(config).await?.pending_events == Some(0) {
            return Ok(());
        }
        deadline.pause("a worker to catch up").await?;
    }
}

/// Updates every branch on the provider, lets both workers catch up, and checks the second
/// subscriber (which replicates branches) has them; returns the provider's rows' md5.
async fn write_branches(
    pair: &Pair,
    config2: &Config,
    subscriber2: &Client,
    set: &str,
) -> anyhow::Result<(i64, String)> {
    pair.provider
        .batch_execute(&format!("UPDATE pgbench_branches SET {set}"))
        .await?;
    caught_up(config2, &pair.provider).await?;
    caught_up(&pair.config, &pair.provider).await?;
    let branches = Pair::md5(&pair.provider, "pgbench_branches", "bid").await?;
    assert_eq!(
        Pair::md5(subscriber2, "pgbench_branches", "bid").await?,
        branches
    );
    Ok(branches)
}

#[tokio::test]
async fn two_subscribers_with_their_own_tables_on_one_queue() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pgbench_init(&pair.dbs.0.dsn(), 1).await?;
    let (config2, _db2, subscriber2) = pair.second_subscriber("worker2").await?;
    let cancel = CancellationToken::new();
    let workers = [run(&pair.config, &cancel), run(&config2, &cancel)];
    let mut load = pgbench_load(&pair.dbs.0.dsn())?;
    let options = AddTableOptions {
        create: true,
        parallel_copy: 2,
        wait: Duration::from_secs(60),
        ..AddTableOptions::default()
    };
    let names = |tables: &[&str]| tables.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    let (tables1, tables2) = (
        names(&["pgbench_accounts", "pgbench_branches"]),
        names(&["pgbench_branches", "pgbench_tellers"]),
    );
    let (one, two) = tokio::join!(
        londiste::add_tables(&pair.config, &tables1, &options),
        londiste::add_tables(&config2, &tables2, &options),
    );
    for added in one?.iter().chain(&two?) {
        assert_eq!(added.state, TableState::Ok, "{added:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.kill()?;
    caught_up(&pair.config, &pair.provider).await?;
    caught_up(&config2, &pair.provider).await?;
    for (subscriber, tables) in [
        (
            &pair.subscriber,
            [("pgbench_accounts", "aid"), ("pgbench_branches", "bid")],
        ),
        (
            &subscriber2,
            [("pgbench_branches", "bid"), ("pgbench_tellers", "tid")],
        ),
    ] {
        for (table, key) in tables {
            assert_eq!(
                Pair::md5(&pair.provider, table, key).await?,
                Pair::md5(subscriber, table, key).await?,
                "{table}"
            );
        }
    }
    let missing: Option<i64> = subscriber2
        .query_one("SELECT to_regclass('pgbench_accounts')::oid::bigint", &[])
        .await?
        .get(0);
    assert_eq!(missing, None, "the second subscriber never made accounts");

    // The first subscriber leaves branches: the second still gets its changes.
    londiste::remove_table(&pair.config, "pgbench_branches").await?;
    let branches = write_branches(&pair, &config2, &subscriber2, "bbalance = bbalance + 1").await?;
    assert_ne!(
        Pair::md5(&pair.subscriber, "pgbench_branches", "bid").await?,
        branches
    );
    let captured: Vec<(String, Vec<String>)> = pair
        .provider
        .query(
            "SELECT table_name, consumers FROM londiste_rs.provider_table ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        captured,
        [
            (
                "public.pgbench_accounts".to_owned(),
                vec!["worker".to_owned()]
            ),
            (
                "public.pgbench_branches".to_owned(),
                vec!["worker2".to_owned()]
            ),
            (
                "public.pgbench_tellers".to_owned(),
                vec!["worker2".to_owned()]
            ),
        ]
    );

    // A script reaches every subscriber of the queue, at its point of the stream.
    londiste::execute(
        &pair.config,
        "note.sql",
        "ALTER TABLE pgbench_branches ADD COLUMN note text",
    )
    .await?;
    write_branches(
        &pair,
        &config2,
        &subscriber2,
        "note = 'after', bbalance = bbalance + 1",
    )
    .await?;
    for subscriber in [&pair.subscriber, &subscriber2] {
        let has: bool = subscriber
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'pgbench_branches'::regclass
                                   AND attname = 'note')",
                &[],
            )
            .await?
            .get(0);
        assert!(has, "the script ran on every subscriber");
    }
    cancel.cancel();
    for worker in workers {
        worker.await??;
    }
    Ok(())
}
