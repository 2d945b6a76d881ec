//! Ticking: the daemon over several databases, one pass by hand, the original extension.

use std::time::Duration;

use pgq_core::Flavor;
use pgq_testkit::TestDb;
use pgq_ticker::{DatabaseTicker, Databases, Ticker};
use tokio_util::sync::CancellationToken;

use crate::setup::{
    consumer, dsn, extension, fast_config, listen_ticks, ours, queue_with, take_batch, tick_count,
    wait_for_events,
};

#[tokio::test]
async fn one_daemon_ticks_several_databases_and_queues() -> anyhow::Result<()> {
    let dbs = [TestDb::new().await?, TestDb::new().await?];
    let mut clients = Vec::new();
    for db in &dbs {
        let client = ours(db).await?;
        for name in ["orders", "mails"] {
            queue_with(&client, name, &["worker"]).await?;
        }
        clients.push(client);
    }
    let config = fast_config(Databases::List(
        dbs.iter()
            .map(|db| dsn(&db.dsn()))
            .collect::<anyhow::Result<_>>()?,
    ))?;
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(Ticker::new(config).run(cancel.clone()));

    for (i, client) in clients.iter_mut().enumerate() {
        for name in ["orders", "mails"] {
            let q = crate::setup::queue(name);
            let data = format!("{name} in db {i}");
            pgq_core::insert_event(&*client, &q, "test", &data).await?;
            let events =
                wait_for_events(client, &q, &consumer("worker"), Duration::from_secs(10)).await?;
            let seen: Vec<String> = events.into_iter().filter_map(|e| e.ev_data).collect();
            assert_eq!(seen, vec![data]);
        }
    }

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), daemon).await??;
    Ok(())
}

#[tokio::test]
async fn a_pass_ticks_due_queues_and_announces_them() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    let busy = queue_with(&client, "busy", &[]).await?;
    let idle = queue_with(&client, "idle", &[]).await?;
    let (_listener, mut announced) = listen_ticks(&db.dsn()).await?;

    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
    assert_eq!(ticker.flavor(), Flavor::Ours);
    pgq_core::insert_event(&client, &busy, "t", "1").await?;
    let report = ticker.tick_once().await?;
    assert_eq!(report.queues, 1);
    assert_eq!(tick_count(&client, &busy).await?, 3);
    assert_eq!(
        tick_count(&client, &idle).await?,
        2,
        "nothing waits: no tick"
    );
    let payload = tokio::time::timeout(Duration::from_secs(5), announced.recv()).await?;
    assert_eq!(payload.as_deref(), Some("busy"));

    let again = ticker.tick_once().await?;
    assert_eq!(again.ticks, 0, "nothing new: no tick");
    Ok(())
}

#[tokio::test]
async fn our_ticker_ticks_the_original_extension() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(mut client) = extension(&db).await? else {
        return Ok(());
    };
    let q = queue_with(&client, "legacy", &["reader"]).await?;
    client
        .batch_execute("SELECT pgq.create_queue('paused'); SELECT pgq.set_queue_config('paused', 'ticker_paused', 'true')")
        .await?;
    let (_listener, mut announced) = listen_ticks(&db.dsn()).await?;

    let mut ticker = DatabaseTicker::connect(&dsn(&db.dsn())?).await?;
    assert_eq!(ticker.flavor(), Flavor::Extension);
    assert!(!ticker.catches_up());
    let id = pgq_core::insert_event(&client, &q, "t", "from the extension").await?;
    let report = ticker.tick_once().await?;
    assert_eq!(
        (report.ticks, report.queues, report.catchup_ticks),
        (1, 1, 0)
    );
    let payload = tokio::time::timeout(Duration::from_secs(5), announced.recv()).await?;
    assert_eq!(payload.as_deref(), Some("legacy"));

    let events = take_batch(&mut client, &q, &consumer("reader"))
        .await?
        .expect("a batch after the tick");
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id]);

    let maint = ticker.maintain_once().await?;
    assert_eq!((maint.failed, maint.refused), (0, 0));
    Ok(())
}
