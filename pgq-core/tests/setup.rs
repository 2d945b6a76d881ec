//! The database every API test starts from, whichever PGQ it runs against.

use anyhow::Context as _;
use pgq_core::tokio_postgres::Client;
use pgq_core::{Line, QueueName, TickId};
use pgq_testkit::TestDb;

pub(crate) use pgq_testkit::{consumer, queue};

/// A connection to `db` with PGQ installed: the pgq-rs schema by default, the original extension
/// with `PGQ_TEST_SCHEMA=extension` (CI runs both). `None` (after a loud `SKIPPED` line from the testkit)
/// when the extension is wanted but missing; the test then returns early.
pub(crate) async fn setup(db: &TestDb) -> anyhow::Result<Option<Client>> {
    let mut client = db.client().await?;
    if std::env::var("PGQ_TEST_SCHEMA").is_ok_and(|v| v == "extension") {
        if !pgq_testkit::reference_available(&client).await? {
            return Ok(None);
        }
        pgq_testkit::create_reference_extension(&client).await?;
    } else {
        pgq_core::install(&mut client, &[Line::Pgq]).await?;
    }
    Ok(Some(client))
}

/// Makes the ticker tick the queue now.
pub(crate) async fn tick(client: &Client, queue: &QueueName) -> anyhow::Result<TickId> {
    pgq_core::force_tick(client, queue).await?;
    pgq_core::ticker(client, queue)
        .await?
        .context("the ticker did not tick after force_tick")
}

/// The functions of `schemas` (only the `SECURITY DEFINER` ones with `definers_only`) whose
/// `search_path` is not pinned to `pg_catalog, pg_temp`.
pub(crate) async fn unpinned_functions(
    client: &Client,
    schemas: &[&str],
    definers_only: bool,
) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = ANY($1) AND (p.prosecdef OR NOT $2)
                AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)",
            &[&schemas, &definers_only],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The numbered migration files of `line`, in order, as a DBA applies them with psql.
pub(crate) fn numbered_files(line: Line) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(line.name());
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    Ok(files)
}
