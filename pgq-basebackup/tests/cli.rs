//! The real binary: backup, verify, and its exit codes.

use crate::support::{self, Scratch};

const BIN: &str = env!("CARGO_BIN_EXE_pgq-basebackup");

#[tokio::test]
async fn backup_then_verify() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = source
        .tcp_dsn("postgres")
        .ok_or_else(|| anyhow::anyhow!("no TCP"))?;
    let scratch = Scratch::new("copy")?;
    let dest = scratch.path().display().to_string();
    let (code, out, err) = support::run(
        BIN,
        &[
            "backup",
            "-d",
            &dsn,
            "-D",
            &dest,
            "-j",
            "3",
            "--checkpoint",
            "fast",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup complete"), "{out}");

    let (code, out, err) = support::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup verified"), "{out}");

    std::fs::write(scratch.path().join("base/stray"), "x")?;
    std::fs::remove_file(scratch.path().join("PG_VERSION"))?;
    let (code, out, _) = support::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PG_VERSION: in the manifest, not in the copy"),
        "{out}"
    );
    assert!(
        out.contains("base/stray: in the copy, not in the manifest"),
        "{out}"
    );

    let (code, _, err) = support::run(BIN, &["backup", "-d", &dsn, "-D", &dest]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let (code, _, _) = support::run(BIN, &["backup", "-D", &dest, "-j", "0"]).await?;
    assert_eq!(code, 2, "usage errors exit with 2");
    Ok(())
}

/// Out of space (a file size limit, with SIGXFSZ ignored so writes fail with EFBIG): a clear
/// error, exit code 1, and no manifest, so the copy is not presented as complete.
#[tokio::test]
async fn out_of_space_is_a_clear_error() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = source
        .tcp_dsn("postgres")
        .ok_or_else(|| anyhow::anyhow!("no TCP"))?;
    let scratch = Scratch::new("copy")?;
    let dest = scratch.path().display().to_string();
    let script = "trap '' XFSZ; ulimit -f 2048; exec \"$0\" backup -d \"$1\" -D \"$2\"";
    let (code, out, err) = support::run("sh", &["-c", script, BIN, &dsn, &dest]).await?;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("File too large"), "{err}");
    assert!(!scratch.path().join(pgq_basebackup::MANIFEST).exists());
    let (code, out, _) = support::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 1, "{out}");
    Ok(())
}

/// `--compress zstd` stores `.zst` files; `verify` reads them as they are; `restore`
/// unpacks a directory that `pg_verifybackup` accepts and that starts with the same data.
#[tokio::test]
async fn compress_then_restore_round_trips() -> anyhow::Result<()> {
    let source = support::source().await?;
    let dsn = source
        .tcp_dsn("postgres")
        .ok_or_else(|| anyhow::anyhow!("no TCP"))?;
    let client = support::dsn(&source)?.connect().await?;
    support::fill(&client).await?;
    let sums = support::checksums(&client).await?;
    let packed = Scratch::new("packed")?;
    let dest = packed.path().display().to_string();
    let (code, out, err) = support::run(
        BIN,
        &[
            "backup",
            "-d",
            &dsn,
            "-D",
            &dest,
            "-j",
            "2",
            "--compress",
            "zstd:5",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(packed.path().join("PG_VERSION.zst").is_file());
    assert!(!packed.path().join("PG_VERSION").exists());
    assert!(packed.path().join("backup_manifest").is_file());
    let (code, out, _) = support::run(BIN, &["verify", &dest]).await?;
    assert_eq!(code, 0, "{out}");

    let restored = Scratch::new("restored")?;
    let target = restored.path().display().to_string();
    let (code, out, err) = support::run(BIN, &["restore", &dest, &target]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restored and verified"), "{out}");
    let (code, out, err) = support::run(
        &support::pg_verifybackup().display().to_string(),
        &[&target],
    )
    .await?;
    assert_eq!(code, 0, "pg_verifybackup: {out}{err}");
    let (code, _, err) = support::run(BIN, &["restore", &dest, &target]).await?;
    assert_eq!(code, 1, "a non-empty target is refused");
    assert!(err.contains("not empty"), "{err}");

    let copy = pgq_testkit::Cluster::start_existing(restored.path(), Default::default()).await?;
    let copy_client = pgq_core::Dsn::parse(&copy.dsn("postgres"))?
        .connect()
        .await?;
    assert_eq!(support::checksums(&copy_client).await?, sums);
    Ok(())
}
