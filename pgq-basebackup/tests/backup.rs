//! A backup under a write load, started as a cluster of its own, checked three ways.

use std::os::unix::fs::FileExt as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgq_basebackup::{BackupOptions, Problem};
use pgq_testkit::{Cluster, ClusterOptions};

use crate::support::{self, Load, Scratch};

/// The load runs while files are copied, and is stopped by the hook just before
/// `pg_backup_stop`; the copy recovers to exactly the source's state at that point.
#[tokio::test]
async fn backup_under_load_recovers_to_the_stop_point() -> anyhow::Result<()> {
    let (_source, dsn, client) = support::connected_source().await?;
    support::fill(&client).await?;
    let load = Load::start(&dsn).await?;
    pgq_testkit::wait_for("the load to progress", Duration::from_secs(20), || async {
        Ok(load.done.load(Ordering::Relaxed) >= 300)
    })
    .await?;

    let scratch = Scratch::new("copy")?;
    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.jobs = 2;
    opts.chunk_size = 256 * 1024;
    let switcher = dsn.connect().await?;
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel();
    opts.before_stop = Some(Box::new(move || {
        Box::pin(async move {
            // More than one segment of WAL while the backup runs, then the load stops.
            for _ in 0..2 {
                switcher
                    .batch_execute("INSERT INTO history (account, delta) VALUES (0, 0); SELECT pg_switch_wal();")
                    .await
                    .expect("switching WAL");
            }
            let _ = committed_tx.send(load.stop().await);
        })
    }));
    let summary = pgq_basebackup::backup(opts).await?;
    let committed = committed_rx.await??;
    assert!(committed >= 300, "{committed} transactions");
    assert!(summary.wal_segments >= 3, "{summary:?}");
    assert!(summary.stop_lsn > summary.start_lsn);
    let source_sums = support::checksums(&client).await?;

    support::assert_pg_verifybackup_accepts(scratch.path()).await?;
    let report = pgq_basebackup::verify(scratch.path())?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.files_checked > 100, "{report:?}");

    // A flipped byte in a data file is found, and only that file.
    let relpath: String = client
        .query_one("SELECT pg_relation_filepath('accounts')", &[])
        .await?
        .get(0);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(scratch.path().join(&relpath))?;
    let mut byte = [0_u8; 1];
    file.read_exact_at(&mut byte, 5000)?;
    file.write_all_at(&[byte[0] ^ 0x40], 5000)?;
    let report = pgq_basebackup::verify(scratch.path())?;
    assert_eq!(
        report.problems,
        vec![Problem::Checksum {
            path: relpath.clone()
        }]
    );
    file.write_all_at(&byte, 5000)?;
    drop(file);
    assert!(pgq_basebackup::verify(scratch.path())?.is_ok());

    let copy = Cluster::start_existing(scratch.path(), ClusterOptions::default()).await?;
    let copy_client = pgq_core::Dsn::parse(&copy.dsn("postgres"))?
        .connect()
        .await?;
    let copy_sums = support::checksums(&copy_client).await?;
    assert_eq!(copy_sums, source_sums);
    let history: i64 = copy_client
        .query_one("SELECT count(*) FROM history", &[])
        .await?
        .get(0);
    assert!(
        history >= i64::try_from(committed)?,
        "{history} rows, {committed} committed"
    );
    assert!(
        copy.server_log()
            .contains("consistent recovery state reached"),
        "{}",
        copy.server_log()
    );
    Ok(())
}
