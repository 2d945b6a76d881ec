//! The remote runner: work and batch id in the target database, finish afterwards.

use std::sync::Arc;

use pgq_consumer::RemoteRunner;
use pgq_core::{Dsn, Line};
use pgq_testkit::TestDb;

use crate::common::{config, count, create_applied, produce, setup, tick, Apply};

#[tokio::test]
async fn remote_batches_apply_once_and_done_batches_are_only_finished() -> anyhow::Result<()> {
    let s = setup().await?;
    let target_db = TestDb::new().await?;
    let mut target = target_db.client().await?;
    pgq_core::install(&mut target, &[Line::PgqExt]).await?;
    create_applied(&target).await?;
    let target_dsn = Dsn::parse(&target_db.dsn())?;
    let mut runner = RemoteRunner::connect(
        &s.dsn,
        &target_dsn,
        config(&s.queue, "remote"),
        Arc::new(Apply::default()),
    )
    .await?;
    produce(&s.client, 2, 5).await?;
    tick(&s.client).await?;
    let report = runner.process_next_batch().await?.expect("a batch");
    assert_eq!(report.events, 10);
    assert!(!report.already_done);
    assert_eq!(
        count(&target, "SELECT count(DISTINCT ev_id) FROM applied").await?,
        10
    );
    let done: bool = target
        .query_one(
            "SELECT pgq_ext.is_batch_done('remote', $1)",
            &[&report.batch_id.0],
        )
        .await?
        .get(0);
    assert!(done);

    // A crash after the target's commit: the batch is recorded there, open in the queue.
    produce(&s.client, 1, 5).await?;
    tick(&s.client).await?;
    let consumer = pgq_core::ConsumerName::new("remote")?;
    let batch = pgq_core::next_batch(&s.client, &s.queue, &consumer)
        .await?
        .expect("a batch");
    target
        .execute(
            "SELECT pgq_ext.set_batch_done('remote', $1)",
            &[&batch.id.0],
        )
        .await?;
    let report = runner.process_next_batch().await?.expect("the open batch");
    assert_eq!(report.batch_id, batch.id);
    assert!(report.already_done);
    assert_eq!(count(&target, "SELECT count(*) FROM applied").await?, 10);
    assert!(runner.process_next_batch().await?.is_none());
    Ok(())
}
