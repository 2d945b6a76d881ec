//! The installer over the migrations this build ships.

use pgq_core::{Error, Flavor, Line};
use pgq_testkit::TestDb;

use crate::setup::numbered_files;

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

/// What an installation is made of, object by object, as text that does not depend on oids:
/// schemas, relations with their columns, constraints, indexes and triggers, sequences,
/// functions with their settings, owners and ACLs, comments, and the migrations rows (without
/// the times, and without the installation's own random id).
// language=SQL
const OBJECTS: &str = "
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
     WHERE nspname IN ('pgq', 'pgq_coop', 'pgq_ext', 'londiste_rs', 'pgq_rs'))
SELECT 'schema ' || n.nspname || ' owner ' || pg_get_userbyid(n.nspowner)
       || ' acl ' || coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM unnest(n.nspacl::text[]) x), '-')
  FROM pg_namespace n JOIN ns USING (oid)
UNION ALL
SELECT 'relation ' || c.oid::regclass || ' kind ' || c.relkind::text
       || ' owner ' || pg_get_userbyid(c.relowner) || ' acl ' || coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM unnest(c.relacl::text[]) x), '-')
       || ' options ' || coalesce(c.reloptions::text, '-')
       || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '-')
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
UNION ALL
SELECT 'column ' || a.attrelid::regclass || ' ' || a.attnum || ' ' || a.attname || ' '
       || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
       || ' comment ' || coalesce(col_description(a.attrelid, a.attnum), '-')
       || ' acl ' || coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM unnest(a.attacl::text[]) x), '-')
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(co.oid)
  FROM pg_constraint co JOIN ns ON ns.oid = co.connamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN ns ON ns.oid = c.relnamespace
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN ns ON ns.oid = c.relnamespace
 WHERE NOT t.tgisinternal
UNION ALL
SELECT 'sequence ' || s.seqrelid::regclass || ' ' || s.seqtypid::regtype || ' ' || s.seqstart
       || ' ' || s.seqincrement || ' ' || s.seqmax || ' ' || s.seqmin || ' ' || s.seqcache
       || ' ' || s.seqcycle
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN ns ON ns.oid = c.relnamespace
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' owner ' || pg_get_userbyid(p.proowner)
       || ' acl ' || coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM unnest(p.proacl::text[]) x), '-') || ' definer ' || p.prosecdef
       || ' config ' || coalesce(p.proconfig::text, '-')
       || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-') || E'\\n'
       || pg_get_functiondef(p.oid)
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
UNION ALL
SELECT 'migration ' || line || ' ' || version || ' ' || description || ' '
       || encode(checksum, 'hex') || ' ' || success
  FROM pgq_rs.migrations
ORDER BY 1";

async fn objects(client: &pgq_core::tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(OBJECTS, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A fresh installation runs each line's current file; an earlier one ran the numbered files.
/// Both must make the same database, object by object.
#[tokio::test]
async fn the_current_schema_makes_what_the_numbered_files_make() -> anyhow::Result<()> {
    let fresh = TestDb::new().await?;
    let mut current = fresh.client().await?;
    let report = pgq_core::install(&mut current, &Line::ALL).await?;
    assert!(
        report.lines.iter().any(|l| l.current),
        "no line came from its current file: {report}"
    );

    let history = TestDb::new().await?;
    let mut numbered = history.client().await?;
    for line in Line::ALL {
        for file in numbered_files(line)? {
            let sql = std::fs::read_to_string(&file)?;
            numbered
                .batch_execute(&format!("BEGIN;\n{sql}\nCOMMIT;"))
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
    }
    // The installer records the checksums of what psql installed, as it does for a DBA.
    pgq_core::install(&mut numbered, &Line::ALL).await?;

    let (a, b) = (objects(&current).await?, objects(&numbered).await?);
    let only_current: Vec<&String> = a.iter().filter(|o| !b.contains(o)).collect();
    let only_numbered: Vec<&String> = b.iter().filter(|o| !a.contains(o)).collect();
    assert!(
        only_current.is_empty() && only_numbered.is_empty(),
        "the current files drift from the numbered files:\n--- only from the current files:\n{}\n\
         --- only from the numbered files:\n{}",
        only_current
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        only_numbered
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(a.len() > 300, "the comparison saw {} objects", a.len());
    Ok(())
}
