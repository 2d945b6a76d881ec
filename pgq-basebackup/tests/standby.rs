//! `standby`: the copy streams from the source through its permanent slot.

use std::time::{Duration, Instant};

use pgq_basebackup::BackupOptions;
use pgq_testkit::{Cluster, ClusterOptions};

use crate::support::{self, Scratch};

#[tokio::test]
async fn copy_streams_from_the_source() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = support::dsn(&source)?;
    let client = dsn.connect().await?;
    client
        .batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'before')")
        .await?;
    let scratch = Scratch::new("standby")?;

    // A standby backup that fails drops its permanent slot again.
    let killer = dsn.connect().await?;
    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.standby = true;
    opts.slot = Some("doomed".to_owned());
    opts.before_stop = Some(Box::new(move || {
        Box::pin(async move {
            killer
                .batch_execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                      WHERE query LIKE '%pg_ls_dir(t.path%' AND pid <> pg_backend_pid()",
                )
                .await
                .expect("terminating the backup session");
        })
    }));
    let result = pgq_basebackup::backup(opts).await;
    assert!(result.is_err(), "{result:?}");
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0);

    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.standby = true;
    opts.force = true;
    opts.slot = Some("replica_1".to_owned());
    opts.jobs = 2;
    let summary = pgq_basebackup::backup(opts).await?;
    assert_eq!(summary.slot.as_deref(), Some("replica_1"));
    assert!(scratch.path().join("standby.signal").is_file());
    let auto = std::fs::read_to_string(scratch.path().join("postgresql.auto.conf"))?;
    assert!(auto.contains("primary_slot_name = 'replica_1'"), "{auto}");
    let report = pgq_basebackup::verify(scratch.path())?;
    assert!(report.is_ok(), "{:?}", report.problems);

    let replica = Cluster::start_existing(scratch.path(), ClusterOptions::default()).await?;
    let replica_client = pgq_core::Dsn::parse(&replica.dsn("postgres"))?
        .connect()
        .await?;
    client
        .execute("INSERT INTO notes VALUES (2, 'after')", &[])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = replica_client
            .query_one(
                "SELECT pg_is_in_recovery(), (SELECT body FROM notes WHERE id = 2), \
                        (SELECT status FROM pg_stat_wal_receiver)",
                &[],
            )
            .await?;
        let (recovering, body, status): (bool, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert!(recovering, "the copy must run as a standby");
        if body.as_deref() == Some("after") && status.as_deref() == Some("streaming") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "row not replicated (receiver {status:?})\n{}",
            replica.server_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let active: bool = client
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'replica_1'",
            &[],
        )
        .await?
        .get(0);
    assert!(active, "the standby streams through its slot");
    Ok(())
}
