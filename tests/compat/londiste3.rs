//! The original londiste3 (python3-londiste) replicates root → leaf on our schema, with
//! pgq_node's and londiste's SQL from the Debian packages installed on top and the original
//! `pgqd` ticking and maintaining both databases. Every Skytools program connects as a login
//! role that is not superuser, is a member of `pgq_admin`, and finds `pgq_admin` without
//! INSERT, UPDATE or DELETE on pgq's meta tables (the test revokes them, as issue 11 does).
//!
//! What that role needs besides `pgq_admin`, found by running the tools without it:
//! - `londiste_writer`, the role londiste.sql creates (itself a member of `pgq_admin`):
//!   londiste's functions (`londiste.get_table_list`, `local_add_table`, …) are granted to it
//!   and not to `pgq_admin`, on the original extension as on our schema. `create-leaf` stops at
//!   `londiste.get_table_list` without it.
//! - On the root's tables: SELECT (the leaf's copy process reads them with COPY) and TRIGGER
//!   (`add-table` creates the capture triggers as the caller: londiste's functions are not
//!   SECURITY DEFINER). Ownership is not needed there.
//! - On the leaf's tables: ownership, and CREATE on their schema. The copy process drops the
//!   primary key and indexes before its COPY and creates them again afterwards (`must be owner
//!   of table` without ownership, `permission denied for schema public` without CREATE).
//! - `londiste compare` (not run here) takes `LOCK TABLE … IN SHARE MODE` on the root's table,
//!   which needs UPDATE, DELETE or TRUNCATE on it: more than this role is given.
//!
//! Skytools' configs and logs go to a [`Scratch`] directory, kept and printed when the test
//! fails. Without python3-londiste, pgqd or the packages' SQL files the test prints `SKIPPED`,
//! or fails with `PGQ_REQUIRE_REFERENCE=1`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use pgq_core::{Dsn, Line};
use pgq_testkit::{Deadline, TestDb};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::queue_db;
use super::skytools::{base_connstr, pgqd_binary, python_imports, Daemon, Scratch, PYTHON};

/// londiste3's command (python3-londiste).
const LONDISTE: &str = "/usr/bin/londiste";

/// The login role every Skytools program of the test connects as. Roles are cluster-wide: it
/// is created once and found again by later runs.
const OPS: &str = "pgqt_londiste3_ops";

/// The replication queue on the root, and the node names (also the job names).
const QUEUE: &str = "l3_q";
const ROOT: &str = "root";
const LEAF: &str = "leaf";

/// The whole test's time budget, setup included.
const PATIENCE: Duration = Duration::from_secs(60);

/// pgq's meta tables, on which `pgq_admin` keeps SELECT only.
const REVOKE_META: &str = "REVOKE INSERT, UPDATE, DELETE ON pgq.queue, pgq.consumer, pgq.tick, \
     pgq.subscription, pgq.retry_queue, pgq.failed_queue FROM pgq_admin";

/// The replicated tables, on root and leaf alike: one keyed by an integer, one by two columns.
const TABLES: &str = "
    CREATE TABLE public.items (id integer PRIMARY KEY, name text, qty integer NOT NULL,
                               note text);
    CREATE TABLE public.pairs (k1 integer, k2 text, body text, PRIMARY KEY (k1, k2));";

/// Each replicated table's rows as text, in key order.
const TABLE_ROWS: [(&str, &str); 2] = [
    ("items", "SELECT t::text FROM public.items t ORDER BY id"),
    (
        "pairs",
        "SELECT t::text FROM public.pairs t ORDER BY k1, k2",
    ),
];

/// Text that londiste's url-encoded row format must carry unchanged.
const AWKWARD: [Option<&str>; 8] = [
    Some("it's \"quoted\""),
    Some("back\\slash \\N"),
    Some("a&b=c%d+e f"),
    Some("ünï € 🐘"),
    Some("line\nbreak\ttab"),
    Some(""),
    Some("NULL"),
    None,
];

/// Where the reference's pieces are.
struct Reference {
    /// pgq_node's and londiste's SQL for the server's major version.
    contrib: PathBuf,
    pgqd: &'static Path,
}

/// The reference's pieces when every one is installed; `None` after
/// [`pgq_testkit::reference_missing`] otherwise.
async fn reference(client: &Client) -> Result<Option<Reference>> {
    let major: i32 = client
        .query_one(
            "SELECT current_setting('server_version_num')::integer / 10000",
            &[],
        )
        .await?
        .get(0);
    let contrib = PathBuf::from(format!("/usr/share/postgresql/{major}/contrib"));
    let mut missing = Vec::new();
    if !Path::new(LONDISTE).is_file() || !python_imports("londiste, pgq, skytools").await {
        missing.push(format!(
            "python3-londiste ({LONDISTE}, importable by {PYTHON})"
        ));
    }
    for (file, package) in [
        ("pgq_node.sql", format!("postgresql-{major}-pgq-node")),
        ("londiste.sql", format!("postgresql-{major}-londiste-sql")),
    ] {
        if !contrib.join(file).is_file() {
            missing.push(format!("{} ({package})", contrib.join(file).display()));
        }
    }
    if !missing.is_empty() {
        pgq_testkit::reference_missing(&format!("missing: {}; install them", missing.join(", ")))?;
        return Ok(None);
    }
    Ok(pgqd_binary()?.map(|pgqd| Reference { contrib, pgqd }))
}

/// Writes `<name>.ini` for londiste3's node `name`, connecting with `dsn`.
fn node_config(scratch: &Scratch, name: &str, dsn: &str) -> Result<PathBuf> {
    scratch.config(
        name,
        "londiste",
        &[
            ("db", dsn),
            ("queue_name", QUEUE),
            ("loop_delay", "0.1"),
            // The root worker moves the queue's `.global_watermark` consumer, the leaf worker
            // its own watermark: every second, so that they do not hold rotation back for the
            // default five minutes.
            ("global_wm_publish_period", "1"),
            ("local_wm_publish_period", "1"),
            ("parallel_copies", "2"),
        ],
    )
}

/// A node's database: our pgq line and PL/pgSQL capture triggers (londiste3's `add-table`
/// creates `pgq.logutriga`/`pgq.sqltriga` triggers), pgq_node's and londiste's SQL from the
/// packages, `pgq_admin` without write access to pgq's meta tables, and the replicated tables.
/// All of it as the superuser: installing the SQL creates schemas and roles.
async fn node_db(contrib: &Path) -> Result<(TestDb, Client)> {
    let (db, su) = queue_db(&[Line::PgqTriggers]).await?;
    // Debian ships each of these scripts twice: `extension/<name>--<version>.sql` for CREATE
    // EXTENSION, and `contrib/<name>.sql` for psql. They are the same text but for the
    // extension's `pg_extension_config_dump()` calls, which only work inside CREATE EXTENSION;
    // neither has a `\echo` guard or any other psql command. So the psql form is run as it is,
    // read from /usr/share now, in one transaction like `psql -1 -f` (a multi-statement simple
    // query is one implicit transaction).
    for script in ["pgq_node.sql", "londiste.sql"] {
        let path = contrib.join(script);
        let sql = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        su.batch_execute(&sql)
            .await
            .with_context(|| format!("running {} on our schema", path.display()))?;
    }
    su.batch_execute(REVOKE_META).await?;
    su.batch_execute(TABLES).await?;
    Ok((db, su))
}

/// Creates the [`OPS`] role (or finds it) as a member of `pgq_admin` and `londiste_writer`
/// (created by londiste.sql), and checks that it is not superuser and a member of nothing else.
async fn ops_role(su: &Client) -> Result<()> {
    match su
        .batch_execute(&format!("CREATE ROLE {OPS} LOGIN NOSUPERUSER"))
        .await
    {
        Ok(()) => {}
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
        Err(e) => return Err(e).context("creating the Skytools role"),
    }
    su.batch_execute(&format!("GRANT pgq_admin, londiste_writer TO {OPS}"))
        .await?;
    let row = su
        .query_one(
            "SELECT rolsuper,
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                            JOIN pg_roles g ON g.oid = m.roleid
                           WHERE m.member = r.oid ORDER BY 1)
               FROM pg_roles r WHERE rolname = $1",
            &[&OPS],
        )
        .await?;
    let (superuser, member_of): (bool, Vec<String>) = (row.get(0), row.get(1));
    ensure!(
        !superuser && member_of == ["londiste_writer", "pgq_admin"],
        "{OPS} must be no superuser and a member of londiste_writer and pgq_admin only \
         (superuser: {superuser}, member of {member_of:?})"
    );
    Ok(())
}

/// The Skytools daemons of the test, checked at every pause of a wait, within one deadline.
struct Watch<'a> {
    scratch: &'a Scratch,
    daemons: Vec<Daemon>,
    deadline: Deadline,
}

impl Watch<'_> {
    /// Fails when a daemon has exited or the deadline has passed, else waits one
    /// [`pgq_testkit::POLL`].
    async fn pause(&mut self, waiting_for: &str) -> Result<()> {
        for daemon in &mut self.daemons {
            daemon
                .check(self.scratch)
                .with_context(|| format!("while waiting for {waiting_for}"))?;
        }
        Ok(self.deadline.pause(waiting_for).await?)
    }

    /// `londiste <ini> args…` to completion; its stdout.
    async fn londiste(&self, ini: &Path, args: &[&str]) -> Result<String> {
        let ini = ini.to_str().context("a UTF-8 scratch path")?;
        let mut argv = vec![ini];
        argv.extend_from_slice(args);
        self.scratch.run(LONDISTE, &argv, self.deadline).await
    }

    /// Waits until the leaf's tables are `ok` (copied and caught up).
    async fn tables_ok(&mut self, leaf: &Client) -> Result<()> {
        loop {
            let states: Vec<(String, Option<String>)> = leaf
                .query(
                    "SELECT table_name, merge_state FROM londiste.get_table_list($1)
                      ORDER BY table_name",
                    &[&QUEUE],
                )
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            if states.len() == 2 && states.iter().all(|(_, s)| s.as_deref() == Some("ok")) {
                return Ok(());
            }
            self.pause("the leaf's tables to be ok")
                .await
                .with_context(|| format!("table states on the leaf: {states:?}"))?;
        }
    }

    /// Waits until every replicated table has the same rows on the leaf as on the root.
    async fn same_rows(&mut self, root: &Client, leaf: &Client) -> Result<()> {
        loop {
            let mut differences = Vec::new();
            for (table, sql) in TABLE_ROWS {
                let (on_root, on_leaf) = (rows(root, sql).await?, rows(leaf, sql).await?);
                if on_root != on_leaf {
                    differences.push(format!(
                        "{table}: only on the root {:?}, only on the leaf {:?}",
                        on_root.difference(&on_leaf).take(5).collect::<Vec<_>>(),
                        on_leaf.difference(&on_root).take(5).collect::<Vec<_>>()
                    ));
                }
            }
            if differences.is_empty() {
                return Ok(());
            }
            self.pause("the leaf to have the root's rows")
                .await
                .with_context(|| differences.join("; "))?;
        }
    }
}

async fn rows(client: &Client, sql: &str) -> Result<BTreeSet<String>> {
    Ok(client
        .query(sql, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Writes on the root, in separate, interleaved and concurrent transactions: inserts (with
/// awkward text and NULLs), updates, deletes, on both tables, and a rolled-back transaction.
async fn write_root(db: &TestDb, su: &Client) -> Result<()> {
    let mut a = db.client().await?;
    let tx = a.transaction().await?;
    for (i, text) in AWKWARD.iter().enumerate() {
        let id = 101 + i32::try_from(i)?;
        tx.execute(
            "INSERT INTO public.items VALUES ($1, $2, $1, $2)",
            &[&id, text],
        )
        .await?;
        if let Some(key) = text {
            tx.execute("INSERT INTO public.pairs VALUES ($1, $2, $2)", &[&id, key])
                .await?;
        }
    }
    tx.commit().await?;
    su.batch_execute(
        "UPDATE public.items SET qty = qty * 10, note = 'tenfold' WHERE id % 3 = 0;
         DELETE FROM public.items WHERE id % 7 = 0;
         UPDATE public.pairs SET body = upper(body) WHERE k1 < 3;
         DELETE FROM public.pairs WHERE k2 LIKE 'k1%';
         BEGIN; INSERT INTO public.items VALUES (999, 'rolled back', 0, NULL); ROLLBACK;",
    )
    .await?;

    // Two open transactions at once; the later one touches a row after the first committed.
    let mut b = db.client().await?;
    let (ta, tb) = (a.transaction().await?, b.transaction().await?);
    ta.batch_execute(
        "UPDATE public.items SET note = 'by a' WHERE id = 1;
         INSERT INTO public.pairs VALUES (500, 'a', 'by a');",
    )
    .await?;
    tb.batch_execute(
        "UPDATE public.items SET note = 'by b' WHERE id = 2;
         DELETE FROM public.pairs WHERE k1 = 4;",
    )
    .await?;
    tb.commit().await?;
    ta.batch_execute("UPDATE public.items SET note = note || ', then a' WHERE id = 2")
        .await?;
    ta.commit().await?;

    // Four writers at the same time, ten transactions each, on their own keys.
    let writers = (1..=4).map(|w: i32| async move {
        let mut client = db.client().await?;
        for i in 0..10 {
            let id = 1000 * w + i;
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO public.items VALUES ($1, 'writer ' || $2::integer, $3, NULL)",
                &[&id, &w, &i],
            )
            .await?;
            tx.execute(
                "UPDATE public.items SET qty = qty + 1, note = 'bumped' WHERE id = $1 - 1",
                &[&id],
            )
            .await?;
            if i % 3 == 2 {
                tx.execute("DELETE FROM public.items WHERE id = $1 - 2", &[&id])
                    .await?;
            }
            tx.execute(
                "INSERT INTO public.pairs VALUES ($1, 'w', 'writer') ON CONFLICT DO NOTHING",
                &[&id],
            )
            .await?;
            tx.commit().await?;
        }
        anyhow::Ok(())
    });
    futures_util::future::try_join_all(writers).await?;
    Ok(())
}

/// Every session of `db` but the test's own (`own` backend pids) belongs to [`OPS`], and there
/// is at least one: the Skytools programs connect as that role.
async fn skytools_sessions(su: &Client, db: &str, own: &[i32]) -> Result<()> {
    let users: Vec<String> = su
        .query(
            "SELECT usename::text FROM pg_stat_activity
              WHERE datname = $1 AND backend_type = 'client backend' AND pid <> ALL($2)",
            &[&db, &own],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    ensure!(
        !users.is_empty() && users.iter().all(|user| user == OPS),
        "sessions of Skytools in {db} connect as {users:?}, expected {OPS} only"
    );
    Ok(())
}

async fn backend_pid(client: &Client) -> Result<i32> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0))
}

/// The queue's current event table and time of its last switch.
async fn rotation_state(client: &Client) -> Result<(i32, String)> {
    let row = client
        .query_one(
            "SELECT queue_cur_table, queue_switch_time::text FROM pgq.get_queue_info($1)",
            &[&QUEUE],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// londiste3 `create-root`, `create-leaf`, `add-table` and its root and leaf workers, with
/// pgqd, all connected as a non-superuser member of `pgq_admin` on databases where `pgq_admin`
/// may not write pgq's meta tables: the leaf gets the root's rows (initial copy, then inserts,
/// updates and deletes of separate, interleaved and concurrent transactions, awkward text and
/// NULLs) row for row; `status`, `members` and `tables` answer; pgqd's maintenance rotates the
/// queue's event tables after a `set_queue_config` by that role, and replication goes on
/// across the rotations.
#[tokio::test]
async fn londiste3_replicates_root_to_leaf_as_pgq_admin_member() -> Result<()> {
    let started = std::time::Instant::now();
    let deadline = Deadline::after(PATIENCE);
    let probe = TestDb::new().await?;
    let Some(reference) = reference(&probe.client().await?).await? else {
        return Ok(());
    };
    drop(probe);
    let (root_db, root) = node_db(&reference.contrib).await?;
    let (leaf_db, leaf) = node_db(&reference.contrib).await?;
    ops_role(&root).await?;
    // The leaf's copy process rebuilds the leaf table's indexes: owner, and CREATE on the schema.
    leaf.batch_execute(&format!(
        "ALTER TABLE public.items OWNER TO {OPS}; ALTER TABLE public.pairs OWNER TO {OPS};
         GRANT CREATE ON SCHEMA public TO {OPS};"
    ))
    .await?;
    // On the root the tables stay the application's (here the superuser's, which also writes
    // them): the copy reads them, add-table creates triggers on them.
    root.batch_execute(&format!(
        "GRANT SELECT, TRIGGER ON public.items, public.pairs TO {OPS};
         INSERT INTO public.items SELECT g, 'item ' || g, g, NULL FROM generate_series(1, 40) g;
         INSERT INTO public.pairs SELECT g % 5, 'k' || g, 'body ' || g
           FROM generate_series(1, 20) g;"
    ))
    .await?;

    let scratch = Scratch::new()?;
    let (root_ops, leaf_ops) = (root_db.dsn_as(OPS), leaf_db.dsn_as(OPS));
    let root_ini = node_config(&scratch, ROOT, &root_ops)?;
    let leaf_ini = node_config(&scratch, LEAF, &leaf_ops)?;
    let mut watch = Watch {
        scratch: &scratch,
        daemons: Vec::new(),
        deadline,
    };

    watch
        .londiste(&root_ini, &["create-root", ROOT, &root_ops])
        .await?;
    watch
        .londiste(
            &leaf_ini,
            &[
                "create-leaf",
                LEAF,
                &leaf_ops,
                &format!("--provider={root_ops}"),
            ],
        )
        .await?;

    // The role's settings path: set_queue_config works, the table itself is closed to it.
    let ops = Dsn::parse(&root_ops)?.connect().await?;
    let refused = ops
        .execute(
            "UPDATE pgq.queue SET queue_ticker_max_lag = '1 s' WHERE queue_name = $1",
            &[&QUEUE],
        )
        .await
        .expect_err("pgq_admin may no longer update pgq.queue");
    ensure!(
        refused.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "UPDATE pgq.queue as {OPS}: {refused}"
    );
    ops.batch_execute(&format!(
        "SELECT pgq.set_queue_config('{QUEUE}', 'ticker_max_lag', '100 ms');
         SELECT pgq.set_queue_config('{QUEUE}', 'ticker_idle_period', '200 ms');"
    ))
    .await?;

    let pgqd = scratch.pgqd_config(&base_connstr(&root_ops), &[root_db.name(), leaf_db.name()])?;
    // Verbose, for the statements of its maintenance (it logs failed ones at any level).
    let verbose = [OsStr::new("-v"), pgqd.as_os_str()];
    watch
        .daemons
        .push(scratch.start("pgqd", reference.pgqd, &verbose)?);
    for ini in [&root_ini, &leaf_ini] {
        watch
            .londiste(ini, &["add-table", "public.items", "public.pairs"])
            .await?;
    }
    for (name, ini) in [(ROOT, &root_ini), (LEAF, &leaf_ini)] {
        let worker = scratch.start(
            &format!("{name}-worker"),
            LONDISTE,
            &[ini.as_os_str(), OsStr::new("worker")],
        )?;
        watch.daemons.push(worker);
    }
    watch.tables_ok(&leaf).await?;
    watch.same_rows(&root, &leaf).await?;
    eprintln!(
        "tables copied after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let own = [backend_pid(&root).await?, backend_pid(&leaf).await?];
    skytools_sessions(&root, root_db.name(), &own).await?;
    skytools_sessions(&leaf, leaf_db.name(), &own).await?;

    write_root(&root_db, &root).await?;
    watch.same_rows(&root, &leaf).await?;
    eprintln!(
        "writes replicated after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The leaf's tables refuse other writers (londiste3's deny triggers, on our logutriga).
    let denied = leaf
        .batch_execute("INSERT INTO public.items VALUES (-1, 'on the leaf', 0, NULL)")
        .await;
    let denied = denied.expect_err("the leaf accepted a direct insert");
    ensure!(
        denied
            .as_db_error()
            .is_some_and(|e| e.message().contains("change not allowed")),
        "a direct insert on the leaf: {denied}"
    );

    let status = watch.londiste(&root_ini, &["status"]).await?;
    for line in [
        format!("Queue: {QUEUE}   Local node: {ROOT}"),
        format!("{ROOT} (root)"),
        format!("{LEAF} (leaf)"),
    ] {
        ensure!(status.contains(&line), "status lacks {line:?}:\n{status}");
    }
    ensure!(
        status.matches("Tables: 2/0/0").count() == 2,
        "status shows both nodes with 2 tables ok:\n{status}"
    );
    let members = watch.londiste(&root_ini, &["members"]).await?;
    for node in [ROOT, LEAF] {
        ensure!(
            members
                .lines()
                .any(|l| l.starts_with(node) && l.contains("False")),
            "members lacks live node {node}:\n{members}"
        );
    }
    let tables = watch.londiste(&leaf_ini, &["tables"]).await?;
    for table in ["public.items", "public.pairs"] {
        ensure!(
            tables
                .lines()
                .any(|l| l.starts_with(table) && l.split_whitespace().nth(1) == Some("ok")),
            "tables lacks {table} ok:\n{tables}"
        );
    }

    // Rotation by pgqd's maintenance, set up by the role; rows keep coming meanwhile.
    ops.batch_execute(&format!(
        "SELECT pgq.set_queue_config('{QUEUE}', 'rotation_period', '1 s')"
    ))
    .await?;
    let mut seen = vec![rotation_state(&root).await?];
    let mut id = 5000;
    while seen.len() < 3 {
        root.execute(
            "INSERT INTO public.items VALUES ($1, 'during rotation', 1, NULL)",
            &[&id],
        )
        .await?;
        id += 1;
        let state = rotation_state(&root).await?;
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        watch
            .pause("pgqd to rotate the event tables twice")
            .await
            .with_context(|| format!("(current table, switch time) seen: {seen:?}"))?;
    }
    watch.same_rows(&root, &leaf).await?;
    eprintln!(
        "two rotations {seen:?}, replicated after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    watch.pause("the daemons' last check").await?;
    drop(watch);
    // pgqd's maintenance ran each operation `pgq.maint_operations()` lists on the root as the
    // role, and none failed (below). With autovacuum off the list starts with VACUUMs of pgq's
    // tables, after which pgqd ends the round (it takes their command result for a failure) and
    // never reaches pgq_node's and londiste's operations, with any role.
    let autovacuum: String = root.query_one("SHOW autovacuum", &[]).await?.get(0);
    let pgqd_log = std::fs::read_to_string(scratch.path("pgqd.log"))?;
    let mut maintenance = vec![
        "select pgq.maint_rotate_tables_step1($1)",
        "select pgq.maint_rotate_tables_step2()",
    ];
    if autovacuum == "on" {
        maintenance.extend([
            "select pgq_node.maint_watermark($1)",
            "select londiste.periodic_maintenance()",
        ]);
    }
    for statement in maintenance {
        ensure!(
            pgqd_log.contains(&format!("{}]: [{statement}]", root_db.name())),
            "pgqd did not run {statement} on the root:\n{}",
            scratch.tail("pgqd.log")
        );
    }
    for log in ["root.log", "leaf.log", "pgqd.log"] {
        let text = std::fs::read_to_string(scratch.path(log)).unwrap_or_default();
        ensure!(
            !["ERROR", "FATAL", "Traceback"]
                .iter()
                .any(|bad| text.contains(bad)),
            "{log} reports an error:\n{}",
            scratch.tail(log)
        );
    }
    scratch.remove()
}
