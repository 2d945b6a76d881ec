//! The `pgq_ext` line's tracking by (provider installation id, queue, consumer): what it
//! refuses, who may use it, and the installation id it is keyed by.

use pgq_core::tokio_postgres::error::SqlState;
use pgq_core::tokio_postgres::Client;
use pgq_core::Line;
use pgq_testkit::TestDb;

use crate::roles::{connect_as, login_roles, outcome};
use crate::setup::unpinned_functions;

const PROVIDER: &str = "0f3c2a9e-5b1d-4c7e-9a8b-2d6e4f1a7c30";

async fn pgq_ext_db() -> anyhow::Result<(TestDb, Client)> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    pgq_core::install(&mut client, &[Line::PgqExt]).await?;
    Ok((db, client))
}

/// The server's `(SQLSTATE, message, detail)` for a statement that must fail.
async fn refusal(client: &Client, sql: &str) -> (String, String, Option<String>) {
    let err = client.batch_execute(sql).await.expect_err(sql);
    let db = err.as_db_error().expect("a server error");
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.detail().map(str::to_owned),
    )
}

async fn done(client: &Client, batch: i64) -> anyhow::Result<bool> {
    Ok(client
        .query_one(
            &format!("SELECT pgq_ext.is_batch_done_for_update('{PROVIDER}', 'q', 'c', $1)"),
            &[&batch],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn tracking_refusals_say_what_and_why_and_change_nothing() -> anyhow::Result<()> {
    let (_db, client) = pgq_ext_db().await?;
    assert!(!done(&client, 5).await?);
    client
        .batch_execute(&format!(
            "SELECT pgq_ext.set_batch_done('{PROVIDER}', 'q', 'c', 5)"
        ))
        .await?;
    assert_eq!(
        (
            done(&client, 4).await?,
            done(&client, 5).await?,
            done(&client, 6).await?
        ),
        (true, true, false),
        "done means at or below the last batch"
    );
    for batch in [5, 4] {
        assert_eq!(
            refusal(
                &client,
                &format!("SELECT pgq_ext.set_batch_done('{PROVIDER}', 'q', 'c', {batch})")
            )
            .await,
            (
                "PQX01".to_owned(),
                format!("pgq_ext: batch {batch} of queue q is done already for consumer c"),
                Some(format!(
                    "The last batch done from provider {PROVIDER} is 5; batch ids only grow \
                     within one provider installation, so another worker applied this one."
                ))
            )
        );
    }
    let bad_keys = [
        ("NULL", "'q'", "'c'", "1", "the provider id is NULL"),
        (PROVIDER, "''", "'c'", "1", "the queue name is ''"),
        (PROVIDER, "NULL", "'c'", "1", "the queue name is NULL"),
        (PROVIDER, "'q'", "''", "1", "the consumer name is ''"),
        (PROVIDER, "'q'", "NULL", "1", "the consumer name is NULL"),
        (
            PROVIDER,
            "'q'",
            "'c'",
            "0",
            "batch id 0 is not one (batch ids start at 1)",
        ),
        (
            PROVIDER,
            "'q'",
            "'c'",
            "NULL",
            "batch id NULL is not one (batch ids start at 1)",
        ),
    ];
    for function in ["is_batch_done_for_update", "set_batch_done"] {
        for (provider, queue, consumer, batch, problem) in bad_keys {
            let provider = if provider == "NULL" {
                "NULL::uuid".to_owned()
            } else {
                format!("'{provider}'")
            };
            let sql = format!(
                "SELECT pgq_ext.{function}({provider}, {queue}::text, {consumer}::text, \
                 {batch}::bigint)"
            );
            let (code, message, _) = refusal(&client, &sql).await;
            assert_eq!(code, "PQX02", "{sql}");
            assert_eq!(
                message,
                format!("pgq_ext: refusing to track a batch: {problem}"),
                "{sql}"
            );
        }
    }
    assert_eq!(
        pgq_testkit::batch_tracking(&client).await?,
        [(PROVIDER.to_owned(), "q".to_owned(), "c".to_owned(), Some(5))]
    );
    // The consumer-name tracking of PGQ's API is apart and unchanged.
    let legacy: bool = client
        .query_one("SELECT pgq_ext.is_batch_done('c', 5)", &[])
        .await?
        .get(0);
    assert!(!legacy);
    Ok(())
}

#[tokio::test]
async fn only_writers_track_batches() -> anyhow::Result<()> {
    let _serial = pgq_testkit::serial().await;
    let (db, su) = pgq_ext_db().await?;
    login_roles(&su).await?;
    let writer = connect_as(&db, "pgqt_role_writer").await?;
    let reader = connect_as(&db, "pgqt_role_reader").await?;
    let denied = Some(SqlState::INSUFFICIENT_PRIVILEGE);
    for sql in [
        format!("SELECT pgq_ext.is_batch_done_for_update('{PROVIDER}', 'q', 'c', 1)"),
        format!("SELECT pgq_ext.set_batch_done('{PROVIDER}', 'q', 'c', 1)"),
        "SELECT * FROM pgq_ext.batch_tracking".to_owned(),
        "DELETE FROM pgq_ext.batch_tracking".to_owned(),
    ] {
        assert_eq!(outcome(&reader, &sql).await, denied, "{sql}");
    }
    assert_eq!(
        outcome(
            &writer,
            &format!("SELECT pgq_ext.set_batch_done('{PROVIDER}', 'q', 'c', 1)")
        )
        .await,
        None
    );
    assert_eq!(
        outcome(
            &writer,
            "UPDATE pgq_ext.batch_tracking SET last_batch_id = 0"
        )
        .await,
        denied,
        "the row is reached only through the functions"
    );
    assert_eq!(
        pgq_testkit::batch_tracking(&su).await?,
        [(PROVIDER.to_owned(), "q".to_owned(), "c".to_owned(), Some(1))]
    );
    Ok(())
}

#[tokio::test]
async fn every_pgq_ext_function_pins_search_path() -> anyhow::Result<()> {
    let (_db, client) = pgq_ext_db().await?;
    let unpinned = unpinned_functions(&client, &["pgq_ext"], false).await?;
    assert!(unpinned.is_empty(), "search_path not pinned: {unpinned:?}");
    Ok(())
}

#[tokio::test]
async fn the_installation_id_is_read_or_its_absence_explained() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    let err = pgq_core::installation_id(&client).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "database \"{}\" has no pgq-rs installation id (table pgq_rs.installation): \
             installing any pgq-rs line there creates it, e.g. `pgq-ticker install pgq-ext` \
             (next to the original pgq extension too)",
            db.name()
        )
    );
    pgq_core::install(&mut client, &[Line::PgqExt]).await?;
    let id = pgq_core::installation_id(&client).await?;
    let stored: String = client
        .query_one("SELECT id::text FROM pgq_rs.installation", &[])
        .await?
        .get(0);
    assert_eq!(id.as_str(), stored);
    // Another line installed later keeps the id.
    pgq_core::install(&mut client, &[Line::Pgq]).await?;
    assert_eq!(pgq_core::installation_id(&client).await?, id);
    Ok(())
}
