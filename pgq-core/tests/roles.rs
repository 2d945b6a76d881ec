//! PGQ's grant model on our schema: writers produce, readers consume, admins administer.

use pgq_core::tokio_postgres::error::SqlState;
use pgq_core::tokio_postgres::Client;
use pgq_core::{Dsn, Line};
use pgq_testkit::TestDb;

use crate::setup::unpinned_functions;

/// Login roles that are members of one PGQ role each. Roles are cluster-wide, so they are created
/// once and an existing one is tolerated.
pub(crate) async fn login_roles(admin: &Client) -> anyhow::Result<()> {
    for (login, member_of) in [
        ("pgqt_role_writer", "pgq_writer"),
        ("pgqt_role_reader", "pgq_reader"),
        ("pgqt_role_admin", "pgq_admin"),
    ] {
        pgq_testkit::create_role(admin, login, &format!("LOGIN IN ROLE {member_of}")).await?;
    }
    Ok(())
}

/// A database with `lines` installed by the superuser `su` and the [`login_roles`]; the guard
/// holds off other tests' role changes for as long as the test keeps it.
pub(crate) async fn roles_db(
    lines: &[Line],
) -> anyhow::Result<(tokio::sync::MutexGuard<'static, ()>, TestDb, Client)> {
    let serial = pgq_testkit::serial().await;
    let db = TestDb::new().await?;
    let mut su = db.client().await?;
    pgq_core::install(&mut su, lines).await?;
    login_roles(&su).await?;
    Ok((serial, db, su))
}

pub(crate) async fn connect_as(db: &TestDb, role: &str) -> anyhow::Result<Client> {
    Ok(Dsn::parse(&db.dsn_as(role))?.connect().await?)
}

/// Runs `sql` and returns the SQLSTATE it failed with, or `None` when it succeeded.
pub(crate) async fn outcome(client: &Client, sql: &str) -> Option<SqlState> {
    match client.batch_execute(sql).await {
        Ok(()) => None,
        Err(e) => Some(e.code().cloned().expect("a server error")),
    }
}

#[tokio::test]
async fn writers_produce_readers_consume_admins_administer() -> anyhow::Result<()> {
    let (_serial, db, su) = roles_db(&[Line::Pgq]).await?;
    su.batch_execute(
        "SELECT pgq.create_queue('q'); SELECT pgq.register_consumer('q', 'existing');",
    )
    .await?;

    let writer = connect_as(&db, "pgqt_role_writer").await?;
    let reader = connect_as(&db, "pgqt_role_reader").await?;
    let admin = connect_as(&db, "pgqt_role_admin").await?;
    let denied = Some(SqlState::INSUFFICIENT_PRIVILEGE);

    // writer: produces, nothing else
    assert_eq!(
        outcome(&writer, "SELECT pgq.insert_event('q', 't', 'by writer')").await,
        None
    );
    assert_eq!(
        outcome(
            &writer,
            "SELECT pgq.insert_event_bulk('q', ARRAY['t'], ARRAY['bulk'])"
        )
        .await,
        None
    );
    assert_eq!(
        outcome(&writer, "SELECT pgq.register_consumer('q', 'w')").await,
        denied
    );
    assert_eq!(
        outcome(&writer, "SELECT pgq.next_batch('q', 'existing')").await,
        denied
    );
    assert_eq!(outcome(&writer, "SELECT pgq.drop_queue('q')").await, denied);
    assert_eq!(
        outcome(&writer, "SELECT pgq.create_queue('w')").await,
        denied
    );
    assert_eq!(outcome(&writer, "DELETE FROM pgq.queue").await, denied);

    // reader: consumes, cannot produce, drop or reconfigure
    assert_eq!(
        outcome(&reader, "SELECT pgq.register_consumer('q', 'r')").await,
        None
    );
    assert_eq!(outcome(&reader, "SELECT pgq.force_tick('q')").await, None);
    assert_eq!(
        outcome(&reader, "SELECT pgq.insert_event('q', 't', 'by reader')").await,
        denied
    );
    assert_eq!(
        outcome(&reader, "SELECT pgq.drop_queue('q', true)").await,
        denied
    );
    assert_eq!(
        outcome(
            &reader,
            "SELECT pgq.set_queue_config('q', 'ticker_max_count', '1')"
        )
        .await,
        denied
    );
    assert_eq!(outcome(&reader, "SELECT pgq.ticker('q')").await, denied);
    assert_eq!(
        outcome(&reader, "UPDATE pgq.subscription SET sub_batch = 1").await,
        denied
    );

    // the admin ticks; the reader reads the writer's events through the batch API
    assert_eq!(outcome(&admin, "SELECT pgq.ticker('q')").await, None);
    let tx_events = {
        let batch: Option<i64> = reader
            .query_one("SELECT pgq.next_batch('q', 'existing')", &[])
            .await?
            .get(0);
        let batch = batch.expect("a batch after the tick");
        let rows = reader
            .query("SELECT ev_data FROM pgq.get_batch_events($1)", &[&batch])
            .await?;
        let finished: i32 = reader
            .query_one("SELECT pgq.finish_batch($1)", &[&batch])
            .await?
            .get(0);
        assert_eq!(finished, 1);
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(tx_events, ["by writer", "bulk"]);

    // only the admin administers
    assert_eq!(
        outcome(
            &admin,
            "SELECT pgq.set_queue_config('q', 'ticker_max_count', '10')"
        )
        .await,
        None
    );
    assert_eq!(
        outcome(&admin, "SELECT pgq.create_queue('by_admin')").await,
        None
    );
    assert_eq!(
        outcome(&admin, "SELECT pgq.drop_queue('by_admin')").await,
        None
    );
    assert_eq!(
        outcome(&admin, "SELECT pgq.drop_queue('q', true)").await,
        None
    );
    Ok(())
}

#[tokio::test]
async fn security_definer_functions_pin_search_path() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut su = db.client().await?;
    pgq_core::install(&mut su, &[Line::Pgq]).await?;
    let unpinned = unpinned_functions(&su, &["pgq"], true).await?;
    assert!(
        unpinned.is_empty(),
        "SECURITY DEFINER without a pinned search_path: {unpinned:?}"
    );
    Ok(())
}
