//! The real binary: backup, verify, and its exit codes.

use crate::support::{self, Scratch};

const BIN: &str = env!("CARGO_BIN_EXE_pgq-basebackup");

/// `pgq-basebackup backup -d <dsn> -D <dest> <options>`: exit code, stdout, stderr.
async fn backup(dsn: &str, dest: &str, options: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut args = vec!["backup", "-d", dsn, "-D", dest];
    args.extend_from_slice(options);
    Ok(pgq_testkit::run(BIN, &args).await?)
}

#[tokio::test]
async fn backup_then_verify() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = support::tcp_dsn(&source)?;
    let scratch = Scratch::new("copy")?;
    let dest = scratch.path().display().to_string();
    let (code, out, err) = backup(&dsn, &dest, &["-j", "3", "--checkpoint", "fast"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup complete"), "{out}");

    let (code, out, err) = pgq_testkit::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup verified"), "{out}");

    std::fs::write(scratch.path().join("base/stray"), "x")?;
    std::fs::remove_file(scratch.path().join("PG_VERSION"))?;
    let (code, out, _) = pgq_testkit::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PG_VERSION: in the manifest, not in the copy"),
        "{out}"
    );
    assert!(
        out.contains("base/stray: in the copy, not in the manifest"),
        "{out}"
    );

    let (code, _, err) = backup(&dsn, &dest, &[]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let (code, _, _) = pgq_testkit::run(BIN, &["backup", "-D", &dest, "-j", "0"]).await?;
    assert_eq!(code, 2, "usage errors exit with 2");
    Ok(())
}

/// Out of space (a file size limit, with SIGXFSZ ignored so writes fail with EFBIG): a clear
/// error, exit code 1, and no manifest, so the copy is not presented as complete.
#[tokio::test]
async fn out_of_space_is_a_clear_error() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = support::tcp_dsn(&source)?;
    let scratch = Scratch::new("copy")?;
    let dest = scratch.path().display().to_string();
    let script = "trap '' XFSZ; ulimit -f 2048; exec \"$0\" backup -d \"$1\" -D \"$2\"";
    let (code, out, err) = pgq_testkit::run("sh", &["-c", script, BIN, &dsn, &dest]).await?;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("File too large"), "{err}");
    assert!(!scratch.path().join(pgq_basebackup::MANIFEST).exists());
    let (code, out, _) = pgq_testkit::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 1, "{out}");
    Ok(())
}

/// `--compress zstd` stores `.zst` files; `verify` reads them as they are; `restore`
/// unpacks a directory that `pg_verifybackup` accepts and that starts with the same data.
#[tokio::test]
async fn compress_then_restore_round_trips() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = support::tcp_dsn(&source)?;
    let client = support::dsn(&source)?.connect().await?;
    support::fill(&client).await?;
    let sums = support::checksums(&client).await?;
    let packed = Scratch::new("packed")?;
    let dest = packed.path().display().to_string();
    let (code, out, err) = backup(&dsn, &dest, &["-j", "2", "--compress", "zstd:5"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(packed.path().join("PG_VERSION.zst").is_file());
    assert!(!packed.path().join("PG_VERSION").exists());
    assert!(packed.path().join("backup_manifest").is_file());
    let (code, out, _) = pgq_testkit::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 0, "{out}");

    let restored = Scratch::new("restored")?;
    let target = restored.path().display().to_string();
    let (code, out, err) = pgq_testkit::run(BIN, &["restore", &dest, &target]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restored and verified"), "{out}");
    support::assert_pg_verifybackup_accepts(std::path::Path::new(&target)).await?;
    let (code, _, err) = pgq_testkit::run(BIN, &["restore", &dest, &target]).await?;
    assert_eq!(code, 1, "a non-empty target is refused");
    assert!(err.contains("not empty"), "{err}");

    let copy = pgq_testkit::Cluster::start_existing(restored.path(), Default::default()).await?;
    let copy_client = pgq_core::Dsn::parse(&copy.dsn("postgres"))?
        .connect()
        .await?;
    assert_eq!(support::checksums(&copy_client).await?, sums);
    Ok(())
}

/// `--help` shows that `PGQ_DSN` is read, never its value (it may hold a password).
#[tokio::test]
async fn help_never_shows_the_dsn() -> anyhow::Result<()> {
    for args in [
        &["--help"][..],
        &["backup", "--help"],
        &["backup", "-h"],
        &["help", "backup"],
    ] {
        let (code, stdout, stderr) = pgq_testkit::output(
            tokio::process::Command::new(BIN)
                .args(args)
                .env("PGQ_DSN", "host=db1 user=app password=secret"),
        )
        .await?;
        let text = format!("{stdout}{stderr}");
        assert_eq!(code, 0, "{args:?}: {text}");
        assert!(!text.contains("secret"), "{args:?}: {text}");
        if args[0] != "--help" {
            assert!(text.contains("[env: PGQ_DSN]"), "{args:?}: {text}");
        }
    }
    Ok(())
}

/// `restore` of a compressed copy in which files were swapped for links (to a file and to a
/// directory outside it): refused by name before anything is written, the target is not even
/// made, and nothing the links point to is read into it.
#[tokio::test]
async fn restore_never_follows_links() -> anyhow::Result<()> {
    let source = support::source().await?;
    let packed = Scratch::new("packed")?;
    let mut opts = pgq_basebackup::BackupOptions::new(support::dsn(&source)?, packed.path());
    opts.compress = Some(3);
    pgq_basebackup::backup(opts).await?;
    let outside = packed
        .path()
        .parent()
        .expect("scratch parent")
        .join("outside");
    std::fs::create_dir(&outside)?;
    std::fs::write(outside.join("secret"), "top secret")?;
    let target = packed
        .path()
        .parent()
        .expect("scratch parent")
        .join("target");

    let version = packed.path().join("PG_VERSION.zst");
    std::fs::remove_file(&version)?;
    std::os::unix::fs::symlink(outside.join("secret"), &version)?;
    let dir_link = packed.path().join("base/evil");
    std::os::unix::fs::symlink(&outside, &dir_link)?;
    let mut links = vec![version, dir_link];
    while !links.is_empty() {
        let (code, out, err) = pgq_testkit::run(
            BIN,
            &[
                "restore",
                &packed.path().display().to_string(),
                &target.display().to_string(),
            ],
        )
        .await?;
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains("a symbolic link (packing and restoring never follow one)"),
            "{err}"
        );
        assert!(!target.exists(), "nothing is written: {err}");
        // The walk names whichever link it meets first; take that one away and meet the other.
        let named = links
            .iter()
            .position(|link| err.contains(&format!("refused {}:", link.display())))
            .expect("the error names a link");
        std::fs::remove_file(links.remove(named))?;
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret"))?,
        "top secret"
    );
    assert_eq!(std::fs::read_dir(&outside)?.count(), 1);

    // Compression never meets the links a tablespace mapping makes: the two are refused together.
    let dsn = support::tcp_dsn(&source)?;
    let copy = target.display().to_string();
    let (code, out, err) = backup(&dsn, &copy, &["-Z", "zstd", "-T", "/srv/a=/srv/b"]).await?;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "invalid options: a compressed copy keeps its tablespaces inside it; drop \
             --tablespace-mapping or --compress"
        ),
        "{err}"
    );
    assert!(!target.exists());
    Ok(())
}
