//! Tablespaces: a mapped one goes to its new directory behind a `pg_tblspc` link, the
//! other stays inside the copy; both start.

use pgq_basebackup::BackupOptions;
use pgq_testkit::{Cluster, ClusterOptions};

use crate::support::{self, Scratch};

#[tokio::test]
async fn mapped_and_inplace_tablespaces() -> anyhow::Result<()> {
    let (_source, dsn, client) = support::connected_source().await?;
    let scratch = Scratch::new("copy")?;
    let root = scratch
        .path()
        .parent()
        .expect("scratch parent")
        .to_path_buf();
    let (ts1, ts2, moved) = (root.join("ts1"), root.join("ts2"), root.join("ts1_copy"));
    for dir in [&ts1, &ts2] {
        std::fs::create_dir(dir)?;
        support::chown_postgres(dir).await?;
    }
    for (name, dir) in [("ts1", &ts1), ("ts2", &ts2)] {
        client
            .batch_execute(&format!(
                "CREATE TABLESPACE {name} LOCATION '{}'",
                dir.display()
            ))
            .await?;
    }
    client
        .batch_execute(
            "CREATE TABLE t1 TABLESPACE ts1 AS SELECT generate_series(1, 5000) AS id;
             CREATE TABLE t2 TABLESPACE ts2 AS SELECT generate_series(1, 7000) AS id;",
        )
        .await?;
    let oid1: String = client
        .query_one(
            "SELECT oid::text FROM pg_tablespace WHERE spcname = 'ts1'",
            &[],
        )
        .await?
        .get(0);
    let oid2: String = client
        .query_one(
            "SELECT oid::text FROM pg_tablespace WHERE spcname = 'ts2'",
            &[],
        )
        .await?
        .get(0);

    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.tablespace_mapping = vec![(ts1.clone(), moved.clone())];
    opts.jobs = 2;
    pgq_basebackup::backup(opts).await?;
    let link = scratch.path().join("pg_tblspc").join(&oid1);
    assert_eq!(std::fs::read_link(&link)?, moved);
    let inplace = scratch.path().join("pg_tblspc").join(&oid2);
    assert!(inplace.is_dir() && !inplace.is_symlink());
    assert!(!scratch.path().join("tablespace_map").exists());
    let auto = std::fs::read_to_string(scratch.path().join("postgresql.auto.conf"))?;
    assert!(auto.contains("allow_in_place_tablespaces = on"), "{auto}");
    assert!(pgq_basebackup::verify(scratch.path())?.is_ok());
    support::assert_pg_verifybackup_accepts(scratch.path()).await?;

    let mut opts = BackupOptions::new(dsn.clone(), root.join("other"));
    opts.tablespace_mapping = vec![(root.join("nowhere"), root.join("x"))];
    let err = pgq_basebackup::backup(opts)
        .await
        .expect_err("no such tablespace");
    assert!(
        err.to_string().contains("no tablespace of the source"),
        "{err}"
    );

    support::chown_postgres(&moved).await?;
    let copy = Cluster::start_existing(scratch.path(), ClusterOptions::default()).await?;
    let copy_client = pgq_core::Dsn::parse(&copy.dsn("postgres"))?
        .connect()
        .await?;
    let row = copy_client
        .query_one(
            "SELECT (SELECT count(*) FROM t1), (SELECT count(*) FROM t2), \
                    pg_tablespace_location((SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'))",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 5000);
    assert_eq!(row.get::<_, i64>(1), 7000);
    assert_eq!(row.get::<_, String>(2), moved.display().to_string());
    Ok(())
}
