//! The schema attacked as the roles that must not get through: a `pgq_admin` member, a
//! database owner who is no superuser, an application role that writes a captured table.
//! Each test first arms its trap where that can be shown (the trap fires for code that falls
//! for it), then shows that ours does not, and that nothing changed.

use pgq_core::tokio_postgres::error::SqlState;
use pgq_core::tokio_postgres::Client;
use pgq_core::{Dsn, Error, Line};
use pgq_testkit::{Cluster, ClusterOptions, TestDb};

use crate::roles::{connect_as, outcome, roles_db};
use crate::setup::{numbered_files, unpinned_functions};

/// A role that owns the test database (and may create schemas in it) but is no superuser.
const OWNER: &str = "pgqt_attack_owner";

/// Hands `db` to [`OWNER`] and returns a connection as that role.
async fn owner_of(db: &TestDb, su: &Client) -> anyhow::Result<Client> {
    pgq_testkit::create_role(su, OWNER, "LOGIN").await?;
    su.batch_execute(&format!(
        "ALTER DATABASE {} OWNER TO {OWNER}",
        pgq_core::quote_ident(db.name())
    ))
    .await?;
    connect_as(db, OWNER).await
}

async fn is_superuser(client: &Client, role: &str) -> anyhow::Result<bool> {
    Ok(client
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .get(0))
}

async fn exists(client: &Client, regclass: &str) -> anyhow::Result<bool> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&regclass])
        .await?
        .get(0))
}

/// The owner's trap: a table `pgq_rs.migrations` of the right shape whose trigger, run with
/// the rights of whoever inserts, makes the owner superuser (and notes that it ran).
const BOOKKEEPING_TRAP: &str = "
CREATE SCHEMA pgq_rs;
CREATE TABLE pgq_rs.migrations (
    line text NOT NULL, version integer NOT NULL, description text NOT NULL,
    installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL DEFAULT true,
    checksum bytea, execution_time_ms bigint, PRIMARY KEY (line, version));
CREATE TABLE pgq_rs.sprung (at timestamptz DEFAULT now());
CREATE FUNCTION pgq_rs.spring() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgq_rs.sprung DEFAULT VALUES;
    EXECUTE 'ALTER ROLE pgqt_attack_owner SUPERUSER';
    RETURN NEW;
END $$;
CREATE TRIGGER spring BEFORE INSERT OR UPDATE ON pgq_rs.migrations
    FOR EACH ROW EXECUTE FUNCTION pgq_rs.spring();";

#[tokio::test]
async fn installer_refuses_bookkeeping_another_role_controls() -> anyhow::Result<()> {
    let _serial = pgq_testkit::serial().await;
    let db = TestDb::new().await?;
    let mut su = db.client().await?;
    let owner = owner_of(&db, &su).await?;
    owner.batch_execute(BOOKKEEPING_TRAP).await?;

    // The Rust installer: refused before it reads or writes anything.
    match pgq_core::install(&mut su, &[Line::Pgq]).await {
        Err(Error::UntrustedInstallation { problem, hint }) => {
            assert!(
                problem.contains("schema pgq_rs belongs to role pgqt_attack_owner"),
                "{problem}"
            );
            assert!(hint.contains("as the role that owns"), "{hint}");
        }
        other => panic!("expected UntrustedInstallation, got {other:?}"),
    }
    // What a DBA runs with psql -1: refused the same way.
    let tx = su.transaction().await?;
    let err = tx
        .batch_execute(&pgq_core::migrations_sql(Line::Pgq, 0).replace("BEGIN;\n", ""))
        .await
        .expect_err("the psql path must refuse too");
    assert_eq!(err.code().map(SqlState::code), Some("PQR03"));
    drop(tx);
    let sprung: i64 = su
        .query_one("SELECT count(*) FROM pgq_rs.sprung", &[])
        .await?
        .get(0);
    assert_eq!(sprung, 0, "the trap's trigger ran");
    assert!(!is_superuser(&su, OWNER).await?);
    assert!(!exists(&su, "pgq.queue").await?);

    // Handed to the superuser, the table still has the trigger: refused for that.
    su.batch_execute(
        "ALTER SCHEMA pgq_rs OWNER TO CURRENT_USER;
         ALTER TABLE pgq_rs.migrations OWNER TO CURRENT_USER;
         ALTER TABLE pgq_rs.sprung OWNER TO CURRENT_USER;",
    )
    .await?;
    match pgq_core::install(&mut su, &[Line::Pgq]).await {
        Err(Error::UntrustedInstallation { problem, .. }) => assert!(
            problem.contains("trigger spring on table pgq_rs.migrations"),
            "{problem}"
        ),
        other => panic!("expected UntrustedInstallation, got {other:?}"),
    }
    assert!(!is_superuser(&su, OWNER).await?);

    // A rule is refused as a trigger is.
    su.batch_execute(
        "DROP TRIGGER spring ON pgq_rs.migrations;
         CREATE RULE spring AS ON INSERT TO pgq_rs.migrations
             DO ALSO INSERT INTO pgq_rs.sprung DEFAULT VALUES;",
    )
    .await?;
    match pgq_core::install(&mut su, &[Line::Pgq]).await {
        Err(Error::UntrustedInstallation { problem, .. }) => assert!(
            problem.contains("rule spring on table pgq_rs.migrations"),
            "{problem}"
        ),
        other => panic!("expected UntrustedInstallation, got {other:?}"),
    }

    // Without them, the same bookkeeping is used.
    su.batch_execute("DROP RULE spring ON pgq_rs.migrations")
        .await?;
    pgq_core::install(&mut su, &[Line::Pgq]).await?;
    assert!(exists(&su, "pgq.queue").await?);
    Ok(())
}

#[tokio::test]
async fn a_superuser_does_not_upgrade_a_non_superusers_installation() -> anyhow::Result<()> {
    let _serial = pgq_testkit::serial().await;
    let db = TestDb::new().await?;
    let mut su = db.client().await?;
    // The pgq roles exist cluster-wide: made by another installation of this run.
    let scratch = TestDb::new().await?;
    pgq_core::install(&mut scratch.client().await?, &[Line::Pgq]).await?;
    let owner = owner_of(&db, &su).await?;
    // The owner installs version 4, as a DBA would with psql.
    for file in &numbered_files(Line::Pgq)?[..4] {
        owner
            .batch_execute(&format!(
                "BEGIN;\n{}\nCOMMIT;",
                std::fs::read_to_string(file)?
            ))
            .await?;
    }

    match pgq_core::install(&mut su, &[Line::Pgq]).await {
        Err(Error::UntrustedInstallation { problem, hint }) => {
            assert!(
                problem.contains("belongs to role pgqt_attack_owner"),
                "{problem}"
            );
            assert!(hint.contains("Run the installer as the role"), "{hint}");
        }
        other => panic!("expected UntrustedInstallation, got {other:?}"),
    }
    let found: i32 = su
        .query_one(
            "SELECT max(version) FROM pgq_rs.migrations WHERE line = 'pgq'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(found, 4, "nothing applied");

    // Its owner upgrades it.
    let mut owner = Dsn::parse(&db.dsn_as(OWNER))?.connect().await?;
    pgq_core::install(&mut owner, &[Line::Pgq]).await?;
    pgq_core::check(&owner, &[Line::Pgq]).await?;
    Ok(())
}

#[tokio::test]
async fn existing_pgq_roles_are_used_only_when_nobody_else_controls_them() -> anyhow::Result<()> {
    // Roles are cluster-wide: a cluster of its own, so no other test sees these roles.
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let su = Dsn::parse(&cluster.dsn("postgres"))?.connect().await?;
    let refused = |result: pgq_core::Result<pgq_core::InstallReport>| match result {
        Err(Error::MigrationFailed { source, .. }) => {
            let db = source.as_db_error().expect("a server error").clone();
            assert_eq!(db.code().code(), "PQR04");
            db.message().to_owned()
        }
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Somebody made pgq_writer a role that logs in: the installation would hand it the right
    // to produce into every queue.
    su.batch_execute("CREATE ROLE pgq_writer LOGIN PASSWORD 'known'")
        .await?;
    let mut a = fresh_database(&cluster, &su, "a").await?;
    let message = refused(pgq_core::install(&mut a, &[Line::Pgq]).await);
    assert!(
        message.contains("existing role pgq_writer: it can log in"),
        "{message}"
    );
    assert!(!exists(&a, "pgq.queue").await?, "nothing half-done");

    // Somebody may grant pgq_admin to anyone (PostgreSQL 16 gives that to a CREATEROLE role
    // that creates it; here it is granted outright).
    su.batch_execute(
        "ALTER ROLE pgq_writer NOLOGIN PASSWORD NULL;
         CREATE ROLE pgq_admin; CREATE ROLE mallory;
         GRANT pgq_admin TO mallory WITH ADMIN OPTION;",
    )
    .await?;
    let message = refused(pgq_core::install(&mut a, &[Line::Pgq]).await);
    assert!(
        message.contains("existing role pgq_admin: role mallory may grant it"),
        "{message}"
    );
    assert!(!exists(&a, "pgq.queue").await?);

    // Made harmless, the roles are used as they are; a second database of the cluster (or
    // the original extension) finds them so too.
    su.batch_execute("REVOKE ADMIN OPTION FOR pgq_admin FROM mallory")
        .await?;
    pgq_core::install(&mut a, &[Line::Pgq, Line::PgqExt]).await?;
    let mut b = fresh_database(&cluster, &su, "b").await?;
    pgq_core::install(&mut b, &[Line::Pgq, Line::PgqCoop]).await?;
    su.batch_execute("CREATE ROLE ops LOGIN IN ROLE pgq_admin")
        .await?;
    let ops = Dsn::parse(&cluster.dsn("b"))?
        .with_user("ops")
        .connect()
        .await?;
    ops.batch_execute("SELECT pgq.create_queue('by_ops')")
        .await?;
    Ok(())
}

async fn fresh_database(cluster: &Cluster, su: &Client, name: &str) -> anyhow::Result<Client> {
    su.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    Ok(Dsn::parse(&cluster.dsn(name))?.connect().await?)
}

#[tokio::test]
async fn admin_edits_no_meta_row_and_definer_functions_touch_only_queue_objects(
) -> anyhow::Result<()> {
    let (_serial, db, su) = roles_db(&[Line::Pgq, Line::PgqCoop]).await?;
    su.batch_execute(
        "SELECT pgq.create_queue('q');
         CREATE TABLE public.victim (id int);
         INSERT INTO public.victim VALUES (1);",
    )
    .await?;
    let admin = connect_as(&db, "pgqt_role_admin").await?;
    let denied = Some(SqlState::INSUFFICIENT_PRIVILEGE);
    for sql in [
        "UPDATE pgq.queue SET queue_data_pfx = 'public.victim'",
        "UPDATE pgq.queue SET queue_tick_seq = 'pg_catalog.pg_authid'",
        "UPDATE pgq.queue SET queue_extra_maint = '{public.evil}'",
        "INSERT INTO pgq.queue (queue_name, queue_data_pfx, queue_event_seq, queue_tick_seq)
         VALUES ('x', 'public.victim', 'a', 'b')",
        "DELETE FROM pgq.tick",
        "UPDATE pgq.subscription SET sub_last_tick = 1",
        "INSERT INTO pgq.consumer (co_name) VALUES ('x')",
        "DELETE FROM pgq.retry_queue",
        "DELETE FROM pgq.failed_queue",
        "DELETE FROM pgq_coop.batch_takeover",
    ] {
        assert_eq!(outcome(&admin, sql).await, denied, "{sql}");
    }
    // Even the owner cannot point a queue's names elsewhere.
    assert_eq!(
        outcome(
            &su,
            "UPDATE pgq.queue SET queue_data_pfx = 'public.victim' WHERE queue_name = 'q'"
        )
        .await,
        Some(SqlState::CHECK_VIOLATION)
    );
    // What pgq_admin is for still works, through the functions.
    for sql in [
        "SELECT pgq.set_queue_config('q', 'disable_insert', 'true')",
        "SELECT pgq.set_queue_config('q', 'per_tx_limit', '10')",
        "SELECT pgq.grant_perms('q')",
        "SELECT pgq.register_consumer('q', 'c')",
        "SELECT pgq.drop_queue('q', true)",
    ] {
        assert_eq!(outcome(&admin, sql).await, None, "{sql}");
    }
    let victim: i64 = su
        .query_one("SELECT count(*) FROM public.victim", &[])
        .await?
        .get(0);
    assert_eq!(victim, 1);
    let public_grants: i64 = su
        .query_one(
            "SELECT count(*) FROM information_schema.table_privileges
              WHERE table_schema IN ('pg_catalog', 'public') AND grantee = 'PUBLIC'
                AND table_name IN ('pg_authid', 'victim')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(public_grants, 0);
    Ok(())
}

#[tokio::test]
async fn catchup_ticker_never_uses_a_callers_temp_table() -> anyhow::Result<()> {
    let (_serial, db, su) = roles_db(&[Line::Pgq]).await?;
    su.batch_execute(
        "SELECT pgq.create_queue('q');
         SELECT pgq.set_queue_config('q', 'ticker_max_batch', '10');",
    )
    .await?;
    // a transaction each: catch-up cuts between transactions, never inside one
    for _ in 0..100 {
        su.batch_execute("SELECT pgq.insert_event('q', 't', 'e')")
            .await?;
    }
    let admin = connect_as(&db, "pgqt_role_admin").await?;
    // Version 2's catch-up did CREATE TEMP TABLE IF NOT EXISTS pgq_catchup_tx and inserted
    // into it as the function's owner: the caller's own table of that name, with a trigger,
    // ran the trigger as the owner.
    admin
        .batch_execute(
            "CREATE TEMP TABLE pgq_catchup_tx (
                 txid bigint PRIMARY KEY, first_id bigint, last_id bigint, ev_time timestamptz);
             CREATE TEMP TABLE sprung (by_role name);
             CREATE FUNCTION pg_temp.spring() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO pg_temp.sprung VALUES (current_user);
                 BEGIN
                     EXECUTE 'ALTER ROLE pgqt_role_admin SUPERUSER';
                 EXCEPTION WHEN insufficient_privilege THEN NULL;
                 END;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER spring BEFORE INSERT ON pg_temp.pgq_catchup_tx
                 FOR EACH ROW EXECUTE FUNCTION pg_temp.spring();",
        )
        .await?;
    let written: i32 = admin
        .query_one("SELECT pgq.catchup_ticker('q')", &[])
        .await?
        .get(0);
    assert!(written >= 8, "catch-up ran: {written} ticks");
    let sprung: i64 = admin
        .query_one("SELECT count(*) FROM pg_temp.sprung", &[])
        .await?
        .get(0);
    assert_eq!(sprung, 0);
    assert!(!is_superuser(&su, "pgqt_role_admin").await?);
    // The trap was armed: an insert into that table does run the trigger.
    admin
        .batch_execute("INSERT INTO pg_temp.pgq_catchup_tx VALUES (1, 1, 1, now())")
        .await?;
    let sprung: i64 = admin
        .query_one("SELECT count(*) FROM pg_temp.sprung", &[])
        .await?
        .get(0);
    assert_eq!(sprung, 1);
    Ok(())
}

#[tokio::test]
async fn every_function_resolves_names_as_it_was_written() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut su = db.client().await?;
    pgq_core::install(&mut su, &Line::ALL).await?;
    su.batch_execute("SELECT pgq.create_queue('q')").await?;
    let unpinned = unpinned_functions(
        &su,
        &["pgq", "pgq_coop", "pgq_ext", "londiste_rs", "pgq_rs"],
        false,
    )
    .await?;
    assert!(unpinned.is_empty(), "search_path not pinned: {unpinned:?}");

    // A database owner's look-alikes first in everybody's path: no function of ours may
    // resolve a name through it, whoever calls.
    pgq_testkit::shadow_builtins(&db).await?;
    let caller = db.client().await?;
    caller.batch_execute("SELECT now()").await?;
    let armed = pgq_testkit::shadow_calls(&caller).await?;
    assert_eq!(armed, ["now()"], "the trap catches an unqualified call");
    caller.batch_execute("TRUNCATE evil.calls").await?;
    for sql in [
        "CREATE TABLE public.cap (id pg_catalog.int4 PRIMARY KEY, v pg_catalog.text)",
        "SELECT pgq.create_queue('q2')",
        "SELECT pgq.set_queue_config('q2', 'ticker_max_count', '5')",
        "SELECT pgq.set_queue_config('q2', 'per_tx_limit', '1000')",
        "SELECT pgq.register_consumer('q2', 'c')",
        "SELECT pgq_coop.register_subconsumer('q2', 'g', 's')",
        "CREATE TRIGGER c1 AFTER INSERT OR UPDATE OR DELETE ON public.cap
             FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('q2')",
        "SELECT pgq.register_capture('public.cap', 'q2')",
        "CREATE TRIGGER c2 AFTER INSERT OR UPDATE OR DELETE ON public.cap
             FOR EACH ROW EXECUTE FUNCTION pgq.registered_jsontriga('q2', 'backup')",
        "INSERT INTO public.cap VALUES (1, 'a')",
        "UPDATE public.cap SET v = 'b'",
        "DELETE FROM public.cap",
        "SELECT pgq.insert_event('q2', 't', 'd')",
        "SELECT pgq.insert_event('q2', 't', 'd', 'a', 'b', 'c', 'd')",
        "SELECT pgq.insert_event_bulk('q2', ARRAY['t', 't'], ARRAY['d', 'e'])",
        "SELECT pgq.current_event_table('q2')",
        "SELECT pgq.force_tick('q2')",
        "SELECT pgq.ticker()",
        "SELECT pgq.catchup_ticker()",
        "SELECT * FROM pgq.next_batch_info('q2', 'c')",
        "SELECT * FROM pgq.get_batch_events((SELECT pgq.next_batch('q2', 'c')))",
        "SELECT pgq.event_retry((SELECT pgq.next_batch('q2', 'c')), 1, 0)",
        "SELECT * FROM pgq.get_batch_info((SELECT pgq.next_batch('q2', 'c')))",
        "SELECT pgq.finish_batch((SELECT pgq.next_batch('q2', 'c')))",
        "SELECT pgq_coop.next_batch('q2', 'g', 's')",
        "SELECT * FROM pgq.get_queue_info()",
        "SELECT * FROM pgq.get_consumer_info()",
        "SELECT * FROM pgq.get_queue_backlog()",
        "SELECT * FROM pgq.get_consumer_backlog()",
        "SELECT * FROM pgq.maint_operations()",
        "SELECT pgq.maint_retry_events()",
        "SELECT pgq.maint_rotate_tables_step2()",
        "SELECT pgq_ext.set_batch_done('c', 1)",
        "SELECT pgq_ext.is_batch_done('c', 1)",
        "SELECT pgq_ext.set_event_done('c', 2, 3)",
        "SELECT pgq_ext.set_last_tick('c', 4)",
        "SELECT pgq.unregister_consumer('q2', 'c')",
        "SELECT pgq.drop_queue('q2', true)",
    ] {
        caller.batch_execute(sql).await?;
    }
    assert_eq!(
        pgq_testkit::shadow_calls(&caller).await?,
        Vec::<String>::new()
    );
    Ok(())
}

#[tokio::test]
async fn a_fresh_queue_counts_its_first_event() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut su = db.client().await?;
    pgq_core::install(&mut su, &[Line::Pgq]).await?;
    su.batch_execute(
        "SELECT pgq.create_queue('q');
         SELECT pgq.register_consumer('q', 'c');
         SELECT pgq.insert_event('q', 't', 'first');",
    )
    .await?;
    let waiting: i64 = su
        .query_one(
            "SELECT events_since_tick FROM pgq.get_queue_backlog('q')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(waiting, 1);
    su.batch_execute("SELECT pgq.force_tick('q'); SELECT pgq.ticker('q');")
        .await?;
    let batch: i64 = su
        .query_one("SELECT pgq.next_batch('q', 'c')", &[])
        .await?
        .get(0);
    let (start, end): (i64, i64) = {
        let row = su
            .query_one(
                "SELECT seq_start, seq_end FROM pgq.get_batch_info($1)",
                &[&batch],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(start, 0, "the first tick is at position 0");
    assert!(end > start);
    Ok(())
}

/// An application role that may write `public.orders`, and nothing of pgq.
const APP: &str = "pgqt_attack_app";

#[tokio::test]
async fn capture_needs_no_writer_and_writes_only_registered_pairs() -> anyhow::Result<()> {
    let (_serial, db, su) = roles_db(&[Line::Pgq, Line::PgqTriggers]).await?;
    pgq_testkit::create_role(&su, APP, "LOGIN").await?;
    su.batch_execute(&format!(
        "SELECT pgq.create_queue('orders_q'); SELECT pgq.create_queue('billing_q');
         CREATE TABLE public.orders (id int PRIMARY KEY, amount int);
         CREATE TABLE public.notes (id int PRIMARY KEY, body text);
         GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.orders, public.notes TO {APP};
         GRANT TRIGGER ON public.orders, public.notes TO pgqt_role_admin;"
    ))
    .await?;
    let admin = connect_as(&db, "pgqt_role_admin").await?;
    let app = connect_as(&db, APP).await?;
    let denied = Some(SqlState::INSUFFICIENT_PRIVILEGE);

    // Only a pgq_admin registers a pair and creates a registered trigger.
    assert_eq!(
        outcome(
            &app,
            "SELECT pgq.register_capture('public.orders', 'orders_q')"
        )
        .await,
        denied
    );
    admin
        .batch_execute(
            "SELECT pgq.register_capture('public.orders', 'orders_q');
             CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON public.orders
                 FOR EACH ROW EXECUTE FUNCTION pgq.registered_logutriga('orders_q');
             CREATE TRIGGER capture_truncate AFTER TRUNCATE ON public.orders
                 FOR EACH STATEMENT EXECUTE FUNCTION pgq.registered_logutriga('orders_q');",
        )
        .await?;

    // The application writes the table; its changes are captured although it has no pgq role.
    app.batch_execute(
        "INSERT INTO public.orders VALUES (1, 10), (2, 20);
         UPDATE public.orders SET amount = 11 WHERE id = 1;
         DELETE FROM public.orders WHERE id = 2;
         TRUNCATE public.orders;",
    )
    .await?;
    let captured: Vec<(String, String)> = su
        .query(
            "SELECT ev_type, coalesce(ev_data, '') FROM pgq.event_1 ORDER BY ev_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        ("I:id", "id=1&amount=10"),
        ("I:id", "id=2&amount=20"),
        ("U:id", "id=1&amount=11"),
        ("D:id", "id=2&amount=20"),
        ("R", ""),
    ]
    .map(|(t, d)| (t.to_owned(), d.to_owned()));
    assert_eq!(captured, expected);

    // ... and it cannot forge: no insert into any queue, no direct call of the capture code.
    for sql in [
        "SELECT pgq.insert_event('orders_q', 'R', '')",
        "SELECT pgq.insert_event('billing_q', 'I:id', 'id=666')",
        "SELECT pgq.insert_event_bulk('billing_q', ARRAY['I:id'], ARRAY['id=666'])",
        "SELECT pgq._capture_registered('urlenc', 'TRUNCATE', 'STATEMENT', 'AFTER',
             'public.orders'::regclass, 'public', 'orders', ARRAY['orders_q'], NULL::record,
             NULL::record)",
        "CREATE TRIGGER mine AFTER INSERT ON public.notes
             FOR EACH ROW EXECUTE FUNCTION pgq.registered_logutriga('billing_q')",
    ] {
        assert!(outcome(&app, sql).await.is_some(), "{sql}");
    }

    // A registered trigger on a pair nobody registered, or with an expression: refused when
    // it fires, and the write with it.
    admin
        .batch_execute(
            "CREATE TRIGGER into_billing AFTER INSERT ON public.notes
                 FOR EACH ROW EXECUTE FUNCTION pgq.registered_logutriga('billing_q')",
        )
        .await?;
    let err = app
        .batch_execute("INSERT INTO public.notes VALUES (1, 'x')")
        .await
        .expect_err("an unregistered pair");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "PQK01");
    assert_eq!(
        db_err.message(),
        "table public.notes is not registered for capture into queue 'billing_q'"
    );
    su.batch_execute("DROP TRIGGER into_billing ON public.notes")
        .await?;
    admin
        .batch_execute(
            "SELECT pgq.register_capture('public.notes', 'billing_q');
             CREATE TRIGGER with_expr AFTER INSERT ON public.notes
                 FOR EACH ROW EXECUTE FUNCTION
                 pgq.registered_logutriga('billing_q', 'ev_extra4=current_user');",
        )
        .await?;
    let err = app
        .batch_execute("INSERT INTO public.notes VALUES (1, 'x')")
        .await
        .expect_err("an expression");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "PQK02");
    assert!(
        db_err.message().contains("refuse ev_extra4="),
        "{}",
        db_err.message()
    );
    let notes: i64 = su
        .query_one("SELECT count(*) FROM public.notes", &[])
        .await?
        .get(0);
    let billing: i64 = su
        .query_one("SELECT count(*) FROM pgq.event_2", &[])
        .await?
        .get(0);
    assert_eq!((notes, billing), (0, 0), "nothing half-done");

    // Under session_replication_role = local (a script subscribers run themselves) every
    // capture trigger is silent, as PGQ's are.
    su.batch_execute(
        "CREATE TRIGGER plain AFTER INSERT ON public.orders
             FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('orders_q');
         SET session_replication_role = local;
         INSERT INTO public.orders VALUES (3, 30);
         RESET session_replication_role;",
    )
    .await?;
    let after: i64 = su
        .query_one("SELECT count(*) FROM pgq.event_1", &[])
        .await?
        .get(0);
    assert_eq!(after, 5);
    Ok(())
}
