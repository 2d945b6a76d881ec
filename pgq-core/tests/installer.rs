//! The installer over the migrations this build ships.

use pgq_core::{Error, Flavor, Line};
use pgq_testkit::TestDb;

#[tokio::test]
async fn installs_every_line_once() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    assert!(matches!(
        pgq_core::check(&client, &Line::ALL).await,
        Err(Error::SchemaOutdated {
            line: "pgq",
            found: None,
            ..
        })
    ));
    let reversed: Vec<Line> = Line::ALL.iter().rev().copied().collect();
    let report = pgq_core::install(&mut client, &reversed).await?;
    let lines: Vec<(Line, Option<i32>, usize)> = report
        .lines
        .iter()
        .map(|l| (l.line, l.found, l.applied.len()))
        .collect();
    let expected: Vec<(Line, Option<i32>, usize)> = Line::ALL
        .iter()
        .map(|&l| (l, None, usize::try_from(l.latest_version()).unwrap()))
        .collect();
    assert_eq!(lines, expected);
    pgq_core::check(&client, &Line::ALL).await?;
    assert_eq!(pgq_core::flavor(&client).await?, Flavor::Ours);
    let again = pgq_core::install(&mut client, &Line::ALL).await?;
    assert!(again.is_noop(), "{again}");
    let version: String = client.query_one("SELECT pgq.version()", &[]).await?.get(0);
    assert!(version.starts_with("3."), "{version}");
    Ok(())
}

#[tokio::test]
async fn psql_install_then_installer_records_checksums() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    // Every line records itself when a DBA runs its files (londiste_rs did not, once).
    for line in Line::ALL {
        client
            .batch_execute(&pgq_core::migrations_sql(line, 0))
            .await?;
    }
    let report = pgq_core::install(&mut client, &Line::ALL).await?;
    for line in &report.lines {
        assert!(line.applied.is_empty(), "{report}");
        assert_eq!(
            line.checksums_recorded,
            (1..=line.line.latest_version()).collect::<Vec<_>>()
        );
    }
    let missing: i64 = client
        .query_one(
            "SELECT count(*) FROM pgq_rs.migrations WHERE checksum IS NULL",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(missing, 0);
    assert!(pgq_core::migrations_sql(Line::Pgq, Line::Pgq.latest_version()).is_empty());
    Ok(())
}

#[tokio::test]
async fn coop_and_ext_next_to_the_extension() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    if !pgq_testkit::reference_available(&client).await? {
        return Ok(());
    }
    pgq_testkit::create_reference_extension(&client).await?;
    let report = pgq_core::install(&mut client, &Line::ALL).await?;
    let skipped: Vec<Line> = report
        .lines
        .iter()
        .filter(|l| l.provided_by_extension)
        .map(|l| l.line)
        .collect();
    assert_eq!(skipped, [Line::Pgq, Line::PgqTriggers]);
    assert!(report
        .lines
        .iter()
        .all(|l| l.provided_by_extension == l.applied.is_empty()));
    pgq_core::check(&client, &Line::ALL).await?;
    assert_eq!(pgq_core::flavor(&client).await?, Flavor::Extension);
    Ok(())
}

/// Version 1 of each line got a prelude in place; an installation that recorded the earlier
/// text's checksum is still recognised, and a checksum of neither text is not.
#[tokio::test]
async fn an_installation_of_an_earlier_text_is_recognised() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    client
        .batch_execute(
            "UPDATE pgq_rs.migrations SET checksum = decode(
                 '200e0e37a2a941ecb3b847962917d35c15845527deb33cb6eb4e3ba438587a4a', 'hex')
              WHERE line = 'pgq' AND version = 1",
        )
        .await?;
    pgq_core::check(&client, &[Line::Pgq]).await?;
    assert!(pgq_core::install(&mut client, &[Line::Pgq])
        .await?
        .is_noop());
    client
        .batch_execute(
            "UPDATE pgq_rs.migrations SET checksum = decode('00', 'hex')
              WHERE line = 'pgq' AND version = 1",
        )
        .await?;
    assert!(matches!(
        pgq_core::check(&client, &[Line::Pgq]).await,
        Err(Error::MigrationModified {
            line: "pgq",
            version: 1
        })
    ));
    Ok(())
}
