//! The psql regression scripts in `migrations/tests/`: each runs in a fresh database and its
//! output must equal the `.out` file beside it, on our schema and, for `pgq_coop`, on the
//! original extension too.

use std::path::Path;
use std::process::Stdio;

use pgq_core::Line;
use pgq_testkit::TestDb;
use tokio::io::AsyncWriteExt;

/// Runs `migrations/tests/<name>.sql` through psql against `db` the way its `.out` file was
/// made (script on standard input, stderr merged into stdout) and compares the two.
async fn run_script(db: &TestDb, name: &str) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/tests");
    let script = std::fs::read(dir.join(format!("{name}.sql")))?;
    let expected = std::fs::read_to_string(dir.join(format!("{name}.out")))?;
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "exec \"$0\" -X -a -q -d \"$1\" 2>&1"])
        .arg(pgq_testkit::client_program("psql"))
        .arg(db.dsn())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(&script).await?;
    drop(stdin);
    let actual = String::from_utf8(child.wait_with_output().await?.stdout)?;
    let first_difference = expected
        .lines()
        .zip(actual.lines())
        .enumerate()
        .find(|(_, (e, a))| e != a);
    if let Some((line, (e, a))) = first_difference {
        anyhow::bail!(
            "{name}.out line {}:\n  expected: {e}\n  actual:   {a}",
            line + 1
        );
    }
    anyhow::ensure!(
        expected.lines().count() == actual.lines().count(),
        "{name}: {} lines expected, {} printed",
        expected.lines().count(),
        actual.lines().count()
    );
    Ok(())
}

#[tokio::test]
async fn pgq_coop_script_on_our_schema() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    pgq_core::install(&mut db.client().await?, &[Line::Pgq, Line::PgqCoop]).await?;
    run_script(&db, "pgq_coop").await
}

#[tokio::test]
async fn pgq_coop_script_on_the_original_extension() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    if !pgq_testkit::reference_available(&client).await? {
        return Ok(());
    }
    pgq_testkit::create_reference_extension(&client).await?;
    pgq_core::install(&mut client, &[Line::PgqCoop]).await?;
    run_script(&db, "pgq_coop").await
}

#[tokio::test]
async fn pgq_ext_script_alone_in_a_database() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    pgq_core::install(&mut db.client().await?, &[Line::PgqExt]).await?;
    run_script(&db, "pgq_ext").await
}
