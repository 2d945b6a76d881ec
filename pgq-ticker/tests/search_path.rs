//! The daemon's session pins its `search_path`: a database owner who puts a schema of
//! look-alikes of built-ins first in the database's path reaches nothing the ticker runs.

use pgq_core::tokio_postgres::Client;
use pgq_core::Dsn;
use pgq_testkit::{shadow_builtins, shadow_calls, TestDb};
use pgq_ticker::DatabaseTicker;

use crate::setup::{consumer, dsn, extension, ours, queue_with, take_batch};

/// Ticks, maintenance (a rotation due, so that every step runs) and retries on `db`, whose
/// owner shadowed the built-ins; then checks that nothing was resolved to the look-alikes,
/// while an ordinary session is caught.
async fn nothing_reaches_the_ticker(db: &TestDb, mut client: Client) -> anyhow::Result<()> {
    let q = queue_with(&client, "q", &["w"]).await?;
    shadow_builtins(db).await?;
    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
    pgq_core::insert_event(&client, &q, "t", "1").await?;
    let report = ticker.tick_once().await?;
    assert_eq!(report.queues, 1);
    assert!(take_batch(&mut client, &q, &consumer("w")).await?.is_some());
    client
        .execute(
            "UPDATE pgq.queue SET queue_switch_time = now() - interval '1 day'",
            &[],
        )
        .await?;
    let report = ticker.maintain_once().await?;
    assert!(report.calls > 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    ticker.retry_once().await?;
    assert_eq!(shadow_calls(&client).await?, Vec::<String>::new());

    let plain = Dsn::parse(&db.dsn())?.connect().await?;
    plain
        .batch_execute("SELECT now(); SELECT 'a' = 'b'")
        .await?;
    assert_eq!(
        shadow_calls(&client).await?,
        ["now()", "text = text"],
        "an ordinary session is caught"
    );
    Ok(())
}

#[tokio::test]
async fn the_database_owners_search_path_does_not_reach_the_ticker() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    nothing_reaches_the_ticker(&db, client).await
}

/// The original extension's functions pin no `search_path`: only the session's pin protects
/// the ticker there.
#[tokio::test]
async fn the_owners_search_path_does_not_reach_the_ticker_on_the_extension() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = extension(&db).await? else {
        return Ok(());
    };
    nothing_reaches_the_ticker(&db, client).await
}
