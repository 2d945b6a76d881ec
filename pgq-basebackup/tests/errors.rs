//! Bad input fails early and clearly; a failed backup is never presented as complete.

use pgq_basebackup::{BackupOptions, Error};
use pgq_core::Dsn;

use crate::support::{self, Scratch};

#[tokio::test]
async fn unreachable_source() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dsn = Dsn::parse(&format!(
        "host=127.0.0.1 port={port} user=postgres connect_timeout=5"
    ))?;
    let scratch = Scratch::new("copy")?;
    let err = pgq_basebackup::backup(BackupOptions::new(dsn, scratch.path()))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!scratch.path().join(pgq_basebackup::MANIFEST).exists());
    Ok(())
}

/// `--force` empties only a data directory no server runs on, or an earlier copy: a
/// home-like directory, the running source's own data directory, and a mapped tablespace's
/// directory holding other files are refused with the reason and keep every file (so does
/// `--resume`, which deletes what the source does not list); an earlier copy is taken again.
#[tokio::test]
async fn force_empties_only_data_directories_and_copies() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = support::dsn(&source)?;
    let scratch = Scratch::new("home")?;
    let home = scratch.path();
    std::fs::create_dir_all(home.join("docs"))?;
    std::fs::write(home.join(".bashrc"), "mine")?;
    std::fs::write(home.join("docs/notes.txt"), "mine too")?;
    let untouched = || -> anyhow::Result<()> {
        assert_eq!(std::fs::read_to_string(home.join(".bashrc"))?, "mine");
        assert_eq!(
            std::fs::read_to_string(home.join("docs/notes.txt"))?,
            "mine too"
        );
        assert_eq!(std::fs::read_dir(home)?.count(), 2);
        Ok(())
    };
    let err = pgq_basebackup::backup(BackupOptions::new(dsn.clone(), home))
        .await
        .expect_err("DEST is not empty");
    assert!(matches!(err, Error::DestinationNotEmpty { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");

    for (force, action) in [(true, "empty (--force)"), (false, "resume in (--resume)")] {
        let mut opts = BackupOptions::new(dsn.clone(), home);
        opts.force = force;
        opts.resume = !force;
        let err = pgq_basebackup::backup(opts)
            .await
            .expect_err("not a data directory");
        assert!(matches!(err, Error::NotACopy { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to {action} {}: it is neither a PostgreSQL data directory (no \
                 PG_VERSION) nor a copy made by pgq-basebackup (no backup_manifest or \
                 pgq_basebackup.chunks); nothing was deleted",
                home.display()
            )
        );
        untouched()?;
    }

    let mut opts = BackupOptions::new(dsn.clone(), source.data_dir());
    opts.force = true;
    let err = pgq_basebackup::backup(opts)
        .await
        .expect_err("a server runs there");
    assert!(
        err.to_string()
            .contains("holds postmaster.pid, so a server may be running"),
        "{err}"
    );
    let alive: i32 = dsn
        .connect()
        .await?
        .query_one("SELECT 1", &[])
        .await?
        .get(0);
    assert_eq!(alive, 1);

    let copy = home.parent().expect("scratch parent").join("copy");
    let mut opts = BackupOptions::new(dsn.clone(), &copy);
    opts.force = true;
    opts.tablespace_mapping = vec![("/srv/ts".into(), home.to_path_buf())];
    let err = pgq_basebackup::backup(opts)
        .await
        .expect_err("not a tablespace directory");
    let text = err.to_string();
    assert!(
        text.contains("a tablespace directory holds only PG_<version> directories"),
        "{text}"
    );
    assert!(!copy.exists(), "refused before anything is made");
    untouched()?;

    pgq_basebackup::backup(BackupOptions::new(dsn.clone(), &copy)).await?;
    std::fs::write(copy.join("stray"), "left over")?;
    let mut opts = BackupOptions::new(dsn.clone(), &copy);
    opts.force = true;
    pgq_basebackup::backup(opts).await?;
    assert!(!copy.join("stray").exists());
    assert!(pgq_basebackup::verify(&copy)?.is_ok());
    Ok(())
}

/// `--resume` never deletes or writes through a link in the copy: a `base` turned into a link
/// to another directory (by an earlier run, or by anyone who could write into DEST) is
/// refused by name, and the directory it points to keeps its files. Before, the stale-file
/// sweep followed it and deleted them.
#[tokio::test]
async fn resume_refuses_links_in_the_copy() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = support::dsn(&source)?;
    let scratch = Scratch::new("copy")?;
    pgq_basebackup::backup(BackupOptions::new(dsn.clone(), scratch.path())).await?;
    let outside = scratch
        .path()
        .parent()
        .expect("scratch parent")
        .join("outside");
    std::fs::create_dir(&outside)?;
    std::fs::write(outside.join("precious"), "mine")?;
    let base = scratch.path().join("base");
    std::fs::remove_dir_all(&base)?;
    std::os::unix::fs::symlink(&outside, &base)?;

    let mut opts = BackupOptions::new(dsn, scratch.path());
    opts.resume = true;
    let err = pgq_basebackup::backup(opts)
        .await
        .expect_err("a link in the copy");
    let Error::UnsafeEntry { path, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(path, &base);
    assert!(
        err.to_string()
            .contains("a symbolic link this backup did not make for --tablespace-mapping"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(outside.join("precious"))?, "mine");
    assert_eq!(std::fs::read_dir(&outside)?.count(), 1);
    Ok(())
}

#[tokio::test]
async fn role_without_privileges_is_told_the_grants_that_suffice() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = support::dsn(&source)?;
    dsn.connect()
        .await?
        .batch_execute("CREATE ROLE weak LOGIN")
        .await?;
    let scratch = Scratch::new("copy")?;
    let err = pgq_basebackup::backup(BackupOptions::new(dsn.with_user("weak"), scratch.path()))
        .await
        .expect_err("weak may not back up");
    let Error::MissingPrivileges { role, missing } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(role, "weak");
    let text = err.to_string();
    for needed in [
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_backup_start(pg_catalog.text, boolean) TO \"weak\"",
        "pg_catalog.pg_backup_stop(boolean)",
        "pg_catalog.pg_ls_dir(pg_catalog.text, boolean, boolean)",
        "pg_catalog.pg_stat_file(pg_catalog.text, boolean)",
        "pg_catalog.pg_read_binary_file(pg_catalog.text, bigint, bigint, boolean)",
        "ALTER ROLE \"weak\" REPLICATION",
        "pg_read_server_files",
    ] {
        assert!(text.contains(needed), "{needed:?} not in {text}");
    }
    assert_eq!(missing.len(), 7, "{missing:?}");

    // Exactly the grants the message names are enough.
    let admin = dsn.connect().await?;
    for grant in &missing[..6] {
        admin.batch_execute(grant).await?;
    }
    let summary =
        pgq_basebackup::backup(BackupOptions::new(dsn.with_user("weak"), scratch.path())).await?;
    assert!(summary.bytes > 1_000_000, "{summary:?}");
    assert!(pgq_basebackup::verify(scratch.path())?.is_ok());
    let slots: i64 = admin
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0, "the temporary slot is gone with its session");
    Ok(())
}

/// The backup session dies before `pg_backup_stop`: an error, and no manifest, so the copy
/// is not complete and `verify` says so. Then `resume` finishes it, keeping the chunks the
/// source confirms.
#[tokio::test]
async fn interrupted_backup_is_incomplete_until_resumed() -> anyhow::Result<()> {
    let (_source, dsn, client) = support::connected_source().await?;
    support::fill(&client).await?;
    let killer = dsn.connect().await?;
    let scratch = Scratch::new("copy")?;
    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.chunk_size = 1024 * 1024;
    opts.before_stop = Some(Box::new(move || {
        Box::pin(async move {
            killer
                .batch_execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                      WHERE slot_name LIKE 'pgq_basebackup_%'",
                )
                .await
                .expect("terminating the backup session");
        })
    }));
    let err = pgq_basebackup::backup(opts)
        .await
        .expect_err("the session is gone");
    assert!(
        matches!(
            err,
            Error::Db {
                op: "pg_backup_stop",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(scratch.path().join("base").is_dir(), "files were copied");
    assert!(!scratch.path().join(pgq_basebackup::MANIFEST).exists());
    let err = pgq_basebackup::verify(scratch.path()).expect_err("incomplete");
    assert!(err.to_string().contains("incomplete"), "{err}");
    // Changes between the attempts: a new table, and one dropped (its files must go).
    client
        .batch_execute(
            "CREATE TABLE extra AS SELECT generate_series(1, 1000) AS id;
             UPDATE accounts SET balance = balance + 1 WHERE id <= 100;
             DROP TABLE history;",
        )
        .await?;
    let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
    opts.chunk_size = 1024 * 1024;
    opts.resume = true;
    let summary = pgq_basebackup::backup(opts).await?;
    assert!(summary.reused_bytes > 5_000_000, "{summary:?}");
    assert!(summary.reused_bytes < summary.bytes, "{summary:?}");
    let report = pgq_basebackup::verify(scratch.path())?;
    assert!(report.is_ok(), "{:?}", report.problems);
    support::assert_pg_verifybackup_accepts(scratch.path()).await?;

    let sums = support::checksums_of(&client, &["accounts", "wide", "extra"]).await?;
    let copy = pgq_testkit::Cluster::start_existing(scratch.path(), Default::default()).await?;
    let copy_client = Dsn::parse(&copy.dsn("postgres"))?.connect().await?;
    assert_eq!(
        support::checksums_of(&copy_client, &["accounts", "wide", "extra"]).await?,
        sums
    );
    let history: Option<String> = copy_client
        .query_one("SELECT to_regclass('history')::text", &[])
        .await?
        .get(0);
    assert_eq!(history, None, "dropped between the attempts");
    Ok(())
}
