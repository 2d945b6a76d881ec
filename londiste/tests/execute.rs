//! `londiste execute`: DDL at a point of the change stream.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use londiste::{AddTableOptions, LondisteError, Worker};

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

#[tokio::test]
async fn a_column_added_under_load_lands_at_its_point_of_the_stream() -> anyhow::Result<()> {
    let pair = Pair::new().await?;
    pair.both("CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL)")
        .await?;
    pair.provider
        .batch_execute("INSERT INTO acc SELECT g, 0 FROM generate_series(1, 100) g")
        .await?;
    londiste::add_tables(
        &pair.config,
        &["acc".to_owned()],
        &AddTableOptions::default(),
    )
    .await?;
    let added = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicI32::new(0));
    let writer = Writer::start(&pair, Arc::clone(&added), Arc::clone(&last)).await?;
    let mut worker = Worker::connect(&pair.config).await?;
    while last.load(Ordering::SeqCst) < 1100 {
        pair.drain(&mut worker).await?;
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
        pair.drain(&mut worker).await?;
    }
    writer.stop().await?;
    pair.drain(&mut worker).await?;
    pair.assert_same("acc", "id").await?;
    let split: (i64, i64) = {
        let row = pair
            .subscriber
            .query_one(
                "SELECT count(*) FILTER (WHERE c IS NULL AND id > 1000),
                        count(*) FILTER (WHERE c = id AND id > 1000) FROM acc",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    assert!(
        split.0 >= 100 && split.1 >= 100,
        "rows before and after: {split:?}"
    );

    // Refused, and nothing changes.
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
    ];
    for (file, script, message) in refusals {
        let err = londiste::execute(&pair.config, file, script)
            .await
            .expect_err(file);
        assert!(matches!(err, LondisteError::Execute { .. }), "{err}");
        assert!(err.to_string().contains(message), "{file}: {err}");
    }
    let columns: i64 = pair
        .provider
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'acc'::regclass AND attnum > 0",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(columns, 3, "id, v, c");
    let scripts = "SELECT count(*) FROM londiste_rs.executed";
    assert_eq!(
        pair.provider
            .query_one(scripts, &[])
            .await?
            .get::<_, i64>(0),
        1
    );
    assert_eq!(
        pair.subscriber
            .query_one(scripts, &[])
            .await?
            .get::<_, i64>(0),
        1
    );
    // The record and the event share the provider transaction: one record, one event.

    // A column only the provider has stops the worker, naming table and column.
    pair.provider
        .batch_execute("ALTER TABLE acc ADD COLUMN p int; UPDATE acc SET p = 1 WHERE id = 1")
        .await?;
    let err = pair
        .drain(&mut worker)
        .await
        .expect_err("provider-only column");
    assert!(
        format!("{err:#}").contains("subscriber table public.acc has no column \"p\""),
        "{err:#}"
    );
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
