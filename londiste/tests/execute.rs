//! `londiste execute`: DDL at a point of the change stream.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use londiste::{AddTableOptions, LondisteError, Worker};
use tokio_postgres::Client;

use crate::common::Pair;

/// Updates and inserts until stopped; once `added` is set, it writes column `c` too.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Writer {
    async fn start(
        pair: &Pair,
        added: Arc<AtomicBool>,
        last: Arc<AtomicI32>,
    ) -> anyhow::Result<Writer> {
        let client = pgq_core::Dsn::parse(&pair.dbs.0.dsn())?.connect().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut n = 1000;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let with_c = added.load(Ordering::SeqCst);
                if with_c {
                    client
                        .execute("INSERT INTO acc (id, v, c) VALUES ($1, 0, $1)", &[&n])
                        .await?;
                    client
                        .execute(
                            "UPDATE acc SET v = v + 1, c = $1 WHERE id = $1 % 100 + 1",
                            &[&n],
                        )
                        .await?;
                } else {
                    client
                        .execute("INSERT INTO acc (id, v) VALUES ($1, 0)", &[&n])
                        .await?;
                    client
                        .execute("UPDATE acc SET v = v + 1 WHERE id = $1 % 100 + 1", &[&n])
                        .await?;
                }
                last.store(n, Ordering::SeqCst);
            }
            Ok(())
        });
        Ok(Writer { stop, task })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// Rows of `acc` written before the column came (NULL `c`) and after (`c` set), on one side.
async fn split(client: &Client) -> anyhow::Result<(i64, i64)> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE c IS NULL AND id > 1000),
                    count(*) FILTER (WHERE c = id AND id > 1000) FROM acc",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The number of columns of `acc` on one side.
async fn columns(client: &Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'acc'::regclass AND attnum > 0",
            &[],
        )
        .await?
        .get(0))
}

/// Lets every worker apply what there is.
async fn drain_all(pair: &Pair, workers: &mut [Worker]) -> anyhow::Result<()> {
    for worker in workers {
        pair.drain(worker).await?;
    }
    Ok(())
}

/// Scripts recorded as executed on one side.
async fn executed(client: &Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM londiste_rs.executed", &[])
        .await?
        .get(0))
}

#[tokio::test]
async fn a_column_added_under_load_lands_at_its_point_of_the_stream() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    let (config2, _db2, subscriber2) = pair.second_subscriber("worker2").await?;
    let table = "CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL)";
    pair.both(table).await?;
    subscriber2.batch_execute(table).await?;
    pair.provider
        .batch_execute("INSERT INTO acc SELECT g, 0 FROM generate_series(1, 100) g")
        .await?;
    for config in [&pair.config, &config2] {
        londiste::add_tables(config, &["acc".to_owned()], &AddTableOptions::default()).await?;
    }
    let added = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI32::new(0));
    let writer = Writer::start(&pair, Arc::clone(&added), Arc::clone(&last)).await?;
    let mut workers = [
        Worker::connect(&pair.config).await?,
        Worker::connect(&config2).await?,
    ];
    while last.load(Ordering::SeqCst) < 1100 {
        drain_all(&pair, &mut workers).await?;
    }
    let done = londiste::execute(
        &pair.config,
        "add_c.sql",
        "ALTER TABLE acc ADD COLUMN c int",
    )
    .await?;
    assert_eq!(done.file, "add_c.sql");
    added.store(true, Ordering::SeqCst);
    let at = last.load(Ordering::SeqCst);
    while last.load(Ordering::SeqCst) < at + 100 {
        drain_all(&pair, &mut workers).await?;
    }
    writer.stop().await?;
    drain_all(&pair, &mut workers).await?;
    pair.assert_same("acc", "id").await?;
    let provider = Pair::md5(&pair.provider, "acc", "id").await?;
    assert_eq!(Pair::md5(&subscriber2, "acc", "id").await?, provider);
    for subscriber in [&pair.subscriber, &subscriber2] {
        let (before, after) = split(subscriber).await?;
        assert!(
            before >= 100 && after >= 100,
            "rows before and after: {before}, {after}"
        );
    }

    // Refused, and nothing changes on either side.
    let refusals = [
        (
            "add_c.sql",
            "ALTER TABLE acc ADD COLUMN z int",
            "was executed on queue replica already",
        ),
        (
            "index.sql",
            "CREATE INDEX CONCURRENTLY acc_v ON acc (v)",
            "cannot run inside a transaction",
        ),
        (
            "stamp.sql",
            "ALTER TABLE acc ADD COLUMN d timestamptz DEFAULT clock_timestamp()",
            "adds column acc.d = clock_timestamp(), a default that is not immutable",
        ),
        (
            "two.sql",
            "ALTER TABLE acc ADD COLUMN e int; COMMIT",
            "controls transactions (COMMIT)",
        ),
        (
            "bad.sql",
            "ALTER TABLE nowhere ADD COLUMN f int",
            "failed on the provider",
        ),
        (
            "syntax.sql",
            "ALTER TABLE acc ADD COLUMN g int; ALTER TABLE acc ADD COLUMNN h int",
            "failed on the provider",
        ),
    ];
    for (file, script, message) in refusals {
        let err = londiste::execute(&pair.config, file, script)
            .await
            .expect_err(file);
        assert!(matches!(err, LondisteError::Execute { .. }), "{err}");
        assert!(err.to_string().contains(message), "{file}: {err}");
    }
    drain_all(&pair, &mut workers).await?;
    for side in [&pair.provider, &pair.subscriber, &subscriber2] {
        assert_eq!(columns(side).await?, 3, "id, v, c");
        // The record and the event share the provider transaction: one record, one event.
        assert_eq!(executed(side).await?, 1);
    }

    // A column only the provider has stops every worker, naming table and column.
    pair.provider
        .batch_execute("ALTER TABLE acc ADD COLUMN p int; UPDATE acc SET p = 1 WHERE id = 1")
        .await?;
    for worker in &mut workers {
        let err = pair.drain(worker).await.expect_err("provider-only column");
        assert!(
            format!("{err:#}").contains("subscriber table public.acc has no column \"p\""),
            "{err:#}"
        );
    }
    Ok(())
}

/// `check` names each kind of drift, and its exit code tells a script whether replication
/// can go on.
#[tokio::test]
async fn check_lists_drift() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both(
        "CREATE TABLE one (id int PRIMARY KEY, v int);
         CREATE TABLE two (id int PRIMARY KEY, v int);",
    )
    .await?;
    londiste::add_tables(
        &pair.config,
        &["one".to_owned(), "two".to_owned()],
        &AddTableOptions::default(),
    )
    .await?;
    let mut worker = Worker::connect(&pair.config).await?;
    pair.drain(&mut worker).await?;
    assert!(londiste::check(&pair.config).await?.is_empty());

    pair.provider
        .batch_execute(
            "ALTER TABLE one DISABLE TRIGGER _londiste_rs_replica;
             DROP TRIGGER _londiste_rs_replica_truncate ON one;
             ALTER TABLE two ADD COLUMN x int;",
        )
        .await?;
    pair.subscriber
        .batch_execute(
            "ALTER TABLE two ALTER COLUMN v TYPE bigint;
             ALTER TABLE one ADD COLUMN local_only text NOT NULL;",
        )
        .await?;
    let found: Vec<(String, londiste::Severity, String)> = londiste::check(&pair.config)
        .await?
        .into_iter()
        .map(|d| (d.table, d.severity, d.problem))
        .collect();
    let error = londiste::Severity::Error;
    let expected = [
        (
            "public.one",
            error,
            r#"capture trigger "_londiste_rs_replica" is disabled"#,
        ),
        (
            "public.one",
            error,
            r#"capture trigger "_londiste_rs_replica_truncate" is missing"#,
        ),
        (
            "public.one",
            error,
            r#"column "local_only" exists on the subscriber only, NOT NULL without a default"#,
        ),
        (
            "public.two",
            error,
            r#"column "x" (integer) is missing on the subscriber"#,
        ),
        (
            "public.two",
            londiste::Severity::Warning,
            r#"column "v" is integer on the provider, bigint on the subscriber"#,
        ),
    ];
    for (table, severity, problem) in expected {
        assert!(
            found
                .iter()
                .any(|(t, s, p)| t == table && *s == severity && p.contains(problem)),
            "{problem} not in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");

    let dir = pgq_testkit::TempDir::new("londiste-check")?;
    let file = pair.write_config(&dir, "")?;
    let (code, stdout, _) = pgq_testkit::run(
        env!("CARGO_BIN_EXE_londiste"),
        &["--config", file.to_str().unwrap_or_default(), "check"],
    )
    .await?;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(r#"error: public.two: column "x" (integer) is missing"#),
        "{stdout}"
    );
    Ok(())
}

/// A subscriber column whose type would convert the provider's values stops the worker,
/// naming table and column, before any row is written; a type change made with `execute`
/// (both sides at one position) never does, even for a worker that starts before it.
#[tokio::test]
async fn a_converting_column_type_stops_the_worker() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2))")
        .await?;
    londiste::add_tables(&pair.config, &["t".to_owned()], &AddTableOptions::default()).await?;
    pair.provider
        .batch_execute("INSERT INTO t VALUES (1, 1.25)")
        .await?;
    let mut worker = Pair::worker(&pair.config).await?;
    pair.drain(&mut worker).await?;

    // A script, and rows on both sides of it, replayed by a worker that starts with the script
    // still ahead of it in the stream.
    pair.provider
        .batch_execute("INSERT INTO t VALUES (2, 2.5)")
        .await?;
    londiste::execute(
        &pair.config,
        "wider.sql",
        "ALTER TABLE t ALTER COLUMN amount TYPE numeric(12,3)",
    )
    .await?;
    pair.provider
        .batch_execute("INSERT INTO t VALUES (3, 3.125)")
        .await?;
    drop(worker);
    let mut worker = Pair::worker(&pair.config).await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same("t", "id").await?, 3);

    // A change made on the subscriber alone.
    pair.subscriber
        .batch_execute("ALTER TABLE t ALTER COLUMN amount TYPE real")
        .await?;
    pair.provider
        .batch_execute("INSERT INTO t VALUES (4, 4.375)")
        .await?;
    let problem = "column \"amount\" is numeric(12,3) on the provider, real on the \
                   subscriber: values would be converted";
    drop(worker);
    let mut worker = Pair::worker(&pair.config).await?;
    let err = pair.drain(&mut worker).await.expect_err("converting type");
    assert!(
        format!("{err:#}").contains(&format!("provider table public.t: {problem}")),
        "{err:#}"
    );
    let rows: i64 = pair
        .subscriber
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(rows, 3, "nothing applied");
    let drift = londiste::check(&pair.config).await?;
    assert!(
        drift
            .iter()
            .any(|d| d.severity == londiste::Severity::Error && d.problem.contains(problem)),
        "{drift:#?}"
    );
    pair.subscriber
        .batch_execute("ALTER TABLE t ALTER COLUMN amount TYPE numeric(12,3)")
        .await?;
    pair.drain(&mut worker).await?;
    assert_eq!(pair.assert_same("t", "id").await?, 4);
    Ok(())
}

/// A role that may not set `session_replication_role` (here the table's owner, not a
/// superuser) cannot run a script: its changes would be captured as well as replayed. Refused
/// before anything runs, saying what to grant.
#[tokio::test]
async fn execute_needs_a_role_that_can_silence_capture() -> anyhow::Result<()> {
    const OWNER: &str = "pgqt_londiste_table_owner";
    let pair = Pair::new().await?;
    pgq_testkit::create_role(&pair.provider, OWNER, "LOGIN").await?;
    pair.both("CREATE TABLE acc (id int PRIMARY KEY, v int)")
        .await?;
    pair.provider
        .batch_execute(&format!("ALTER TABLE acc OWNER TO {OWNER}"))
        .await?;
    londiste::add_tables(
        &pair.config,
        &["acc".to_owned()],
        &AddTableOptions::default(),
    )
    .await?;
    let mut config = pair.config.clone();
    config.provider = config.provider.with_user(OWNER);
    let err = londiste::execute(&config, "add_c.sql", "ALTER TABLE acc ADD COLUMN c int")
        .await
        .expect_err("not allowed to set session_replication_role");
    assert_eq!(
        err.to_string(),
        "execute add_c.sql: cannot set session_replication_role = local, which keeps the \
         script's own changes out of the capture (permission denied to set parameter \
         \"session_replication_role\"): connect as a superuser, or on PostgreSQL 15+ run \
         `GRANT SET ON PARAMETER session_replication_role TO <role>`"
    );
    assert_eq!(columns(&pair.provider).await?, 2);
    assert_eq!(executed(&pair.provider).await?, 0);
    let scripts: i64 = pair
        .provider
        .query_one(
            "SELECT count(*) FROM pgq.event_template WHERE ev_type = 'EXECUTE'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(scripts, 0);
    Ok(())
}
