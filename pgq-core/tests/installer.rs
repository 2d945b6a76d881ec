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
    client
        .batch_execute(&pgq_core::migrations_sql(Line::Pgq, 0))
        .await?;
    let report = pgq_core::install(&mut client, &[Line::Pgq]).await?;
    assert!(report.lines[0].applied.is_empty());
    assert_eq!(
        report.lines[0].checksums_recorded,
        (1..=Line::Pgq.latest_version()).collect::<Vec<_>>()
    );
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
    client.batch_execute("CREATE EXTENSION pgq").await?;
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
