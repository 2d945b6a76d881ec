//! The manifest's per-file checksum algorithms, each checked by `pg_verifybackup` and by ours.

use std::os::unix::fs::FileExt as _;

use pgq_basebackup::{BackupOptions, ManifestChecksum, Problem, MANIFEST};

use crate::support::{self, Scratch};

/// A copy made with each algorithm is accepted by `pg_verifybackup` and by [`verify`], its
/// manifest names the algorithm, and a flipped byte is caught by both (which shows our
/// checksums are PostgreSQL's, not merely self-consistent).
///
/// [`verify`]: pgq_basebackup::verify
#[tokio::test]
async fn each_algorithm_is_accepted_and_catches_a_flipped_byte() -> anyhow::Result<()> {
    let (_source, dsn, client) = support::connected_source().await?;
    support::fill(&client).await?;
    let relpath: String = client
        .query_one("SELECT pg_relation_filepath('accounts')", &[])
        .await?
        .get(0);
    for algorithm in [
        ManifestChecksum::Crc32c,
        ManifestChecksum::Sha256,
        ManifestChecksum::None,
    ] {
        let scratch = Scratch::new("copy")?;
        let mut opts = BackupOptions::new(dsn.clone(), scratch.path());
        opts.jobs = 2;
        opts.chunk_size = 256 * 1024;
        opts.manifest_checksum = algorithm;
        pgq_basebackup::backup(opts).await?;

        let manifest = std::fs::read_to_string(scratch.path().join(MANIFEST))?;
        let named = format!("\"Checksum-Algorithm\": \"{}\"", algorithm.name());
        assert_eq!(
            manifest.contains(&named),
            algorithm != ManifestChecksum::None,
            "{algorithm}: {manifest:.400}"
        );
        assert_eq!(
            manifest.contains("Checksum-Algorithm"),
            algorithm != ManifestChecksum::None,
            "{algorithm}"
        );
        support::assert_pg_verifybackup_accepts(scratch.path()).await?;
        let report = pgq_basebackup::verify(scratch.path())?;
        assert!(report.is_ok(), "{algorithm}: {:?}", report.problems);
        assert!(report.files_checked > 100, "{algorithm}: {report:?}");

        if algorithm == ManifestChecksum::None {
            continue;
        }
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
            }],
            "{algorithm}"
        );
        let (code, out, err) = pgq_testkit::run(
            pgq_testkit::client_program("pg_verifybackup"),
            &["--no-parse-wal", &scratch.path().display().to_string()],
        )
        .await?;
        assert_ne!(
            code, 0,
            "{algorithm}: pg_verifybackup accepted a flipped byte"
        );
        assert!(
            format!("{out}{err}").contains(&relpath),
            "{algorithm}: {out}{err}"
        );
    }
    Ok(())
}
