//! The admin commands of the real binary, on our schema and on the original extension.

use pgq_core::tokio_postgres::Client;
use pgq_testkit::TestDb;
use serde_json::Value;

use crate::setup::{consumer, extension, queue, run_binary};

/// Runs `pgq-ticker --dsn <db> args...`; fails unless the exit code is `code`.
async fn cli(db: &TestDb, args: &[&str], code: i32) -> anyhow::Result<String> {
    let dsn = db.dsn();
    let mut all = vec!["--dsn", dsn.as_str()];
    all.extend_from_slice(args);
    let (got, stdout, stderr) = run_binary(&all).await?;
    anyhow::ensure!(
        got == code,
        "pgq-ticker {args:?} exited with {got}, expected {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    Ok(stdout)
}

async fn json(db: &TestDb, args: &[&str]) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&cli(db, args, 0).await?)?)
}

/// Four events in four ticks after the consumer's position.
async fn four_ticks(client: &Client) -> anyhow::Result<()> {
    let q = queue("orders");
    for i in 0..4 {
        pgq_core::insert_event(client, &q, "t", &i.to_string()).await?;
        pgq_core::force_tick(client, &q).await?;
        pgq_core::ticker(client, &q).await?;
    }
    Ok(())
}

/// The commands that read and move, the same on both schemas.
async fn reports_and_skip(db: &TestDb, client: &Client) -> anyhow::Result<()> {
    cli(db, &["register", "orders", "mailer"], 0).await?;
    four_ticks(client).await?;

    let status = json(db, &["status", "--json", "--max-tick-age", "1h"]).await?;
    assert_eq!(status["ok"], true, "{status}");
    let queues = status["status"]["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0]["queue"], "orders");
    assert_eq!(queues[0]["consumers"][0]["consumer"], "mailer");
    let table = cli(db, &["status"], 0).await?;
    assert!(table.contains("NO TICKER holds this database"), "{table}");
    assert!(table.contains("mailer"), "{table}");

    let backlog = json(db, &["backlog", "orders", "--json"]).await?;
    assert_eq!(backlog[0]["consumer"], "mailer");
    assert_eq!(backlog[0]["pending_ticks"], 4);
    assert_eq!(backlog[0]["batches"], 4);
    assert!(cli(db, &["backlog"], 0).await?.contains("mailer"));

    let ticks = json(db, &["ticks", "orders", "--limit", "3", "--json"]).await?;
    let ticks = ticks.as_array().expect("ticks");
    assert_eq!(ticks.len(), 3);
    assert!(ticks[0]["tick_id"].as_i64() > ticks[1]["tick_id"].as_i64());
    assert!(ticks[2]["events"].as_i64().is_some());
    cli(db, &["ticks", "missing"], 1).await?;

    let head = ticks[0]["tick_id"].as_i64().expect("a tick id");
    let dry = json(
        db,
        &[
            "skip",
            "orders",
            "mailer",
            "--to-head",
            "--dry-run",
            "--exact",
            "--json",
        ],
    )
    .await?;
    assert_eq!(dry["applied"], false);
    assert_eq!(dry["to_tick"], head);
    assert_eq!(dry["ticks_skipped"], 4);
    assert_eq!(dry["events_exact"], 4);
    assert!(dry["events_skipped"].as_i64() >= Some(4));
    let before = pgq_core::consumer_info(client, Some(&queue("orders")), None).await?;
    assert_eq!(before[0].last_tick.map(|t| t.0), dry["from_tick"].as_i64());

    let text = cli(
        db,
        &["skip", "orders", "mailer", "--to-tick", &head.to_string()],
        0,
    )
    .await?;
    assert!(text.contains(&format!("to tick {head}")), "{text}");
    let after = pgq_core::consumer_info(client, Some(&queue("orders")), None).await?;
    assert_eq!(after[0].last_tick.map(|t| t.0), Some(head));
    assert!(
        pgq_core::next_batch(client, &queue("orders"), &consumer("mailer"))
            .await?
            .is_none()
    );
    cli(db, &["skip", "orders", "mailer", "--to-head"], 1).await?;

    // An old newest tick fails the check.
    client
        .batch_execute("UPDATE pgq.tick SET tick_time = tick_time - interval '2 hours'")
        .await?;
    let failing = cli(db, &["status", "--max-tick-age", "1h"], 1).await?;
    assert!(failing.contains("PROBLEM: queue \"orders\""), "{failing}");

    cli(db, &["unregister", "orders", "mailer"], 0).await?;
    cli(db, &["drop-queue", "orders"], 0).await?;
    Ok(())
}

#[tokio::test]
async fn admin_commands_on_our_schema() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let out = cli(&db, &["install"], 0).await?;
    assert!(out.contains("pgq"), "{out}");
    cli(&db, &["create-queue", "orders"], 0).await?;
    cli(&db, &["create-queue", "orders"], 1).await?;
    cli(
        &db,
        &[
            "config",
            "orders",
            "ticker_max_count=100",
            "queue_ticker_max_lag=2s",
            "ticker_max_batch=5000",
        ],
        0,
    )
    .await?;
    cli(&db, &["config", "orders", "no_such_setting=1"], 1).await?;
    let (code, _, stderr) =
        run_binary(&["--dsn", &db.dsn(), "config", "orders", "ticker_max_batch=0"]).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("queue_ticker_max_batch_positive"),
        "{stderr}"
    );
    let settings = cli(&db, &["config", "orders"], 0).await?;
    assert!(settings.contains("ticker_max_count    100"), "{settings}");
    assert!(settings.contains("ticker_max_batch    5000"), "{settings}");
    assert!(settings.contains("ticker_max_lag      2s"), "{settings}");

    let client = db.client().await?;
    reports_and_skip(&db, &client).await
}

#[tokio::test]
async fn admin_commands_on_the_original_extension() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = extension(&db).await? else {
        return Ok(());
    };
    cli(&db, &["create-queue", "orders"], 0).await?;
    let status = json(&db, &["status", "--json"]).await?;
    assert_eq!(status["status"]["flavor"], "extension");
    reports_and_skip(&db, &client).await
}

/// `migrate-from-extension`: a dry run leaves the extension, the real one moves the queue over
/// with its consumer's position, and a second one is refused (exit 1, nothing changed).
#[tokio::test]
async fn migrate_from_extension_moves_the_queue_over() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let Some(client) = extension(&db).await? else {
        return Ok(());
    };
    cli(&db, &["create-queue", "orders"], 0).await?;
    cli(&db, &["register", "orders", "mailer"], 0).await?;
    let dry = cli(
        &db,
        &[
            "migrate-from-extension",
            "--dry-run",
            "--lock-timeout",
            "5s",
        ],
        0,
    )
    .await?;
    assert!(dry.contains("dry run, rolled back"), "{dry}");
    assert_eq!(
        pgq_core::flavor(&client).await?,
        pgq_core::Flavor::Extension
    );
    let moved = cli(&db, &["migrate-from-extension"], 0).await?;
    assert!(
        moved.contains("moved the pgq extension 3.") && moved.contains("1 queue(s), 1 consumer(s)"),
        "{moved}"
    );
    assert_eq!(pgq_core::flavor(&client).await?, pgq_core::Flavor::Ours);
    let (code, _, stderr) = run_binary(&["--dsn", &db.dsn(), "migrate-from-extension"]).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("there is no pgq extension"), "{stderr}");
    let status = json(&db, &["status", "--json"]).await?;
    assert_eq!(status["status"]["flavor"], "ours");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_fails_the_status_check() -> anyhow::Result<()> {
    let (code, _, stderr) = run_binary(&[
        "--dsn",
        "host=127.0.0.1 port=1 user=postgres dbname=nowhere",
        "status",
    ])
    .await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    Ok(())
}

/// `pgq-ticker sql` prints what a DBA applies with psql: the current schema for a fresh
/// database (which `install` then finds complete, recording only the checksums), and with
/// --from the numbered files after that version.
#[tokio::test]
async fn sql_prints_what_a_dba_applies() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let fresh = cli(&db, &["sql", "pgq", "pgq-triggers"], 0).await?;
    assert!(fresh.contains("-- pgq-rs migration current/pgq.sql\nBEGIN;\n"));
    assert!(fresh.contains("-- pgq-rs migration current/pgq_triggers.sql\nBEGIN;\n"));
    let client = db.client().await?;
    client.batch_execute(&fresh).await?;
    let report = cli(&db, &["install", "pgq", "pgq-triggers"], 0).await?;
    assert!(
        report.contains(&format!(
            "pgq: recorded the checksum of version {}",
            pgq_core::Line::Pgq.latest_version()
        )) && report.contains(&format!(
            "pgq: up to date at version {}",
            pgq_core::Line::Pgq.latest_version()
        )),
        "{report}"
    );

    let latest = pgq_core::Line::Pgq.latest_version();
    let upgrade = cli(&db, &["sql", "pgq", "--from", &(latest - 1).to_string()], 0).await?;
    assert!(upgrade.starts_with(&format!("-- pgq-rs migration pgq/{latest:04}_")));
    assert_eq!(upgrade.matches("BEGIN;\n").count(), 1, "{upgrade}");
    let latest = latest.to_string();
    assert_eq!(
        cli(&db, &["sql", "pgq", "--from", &latest], 0)
            .await?
            .trim(),
        ""
    );
    Ok(())
}

#[tokio::test]
async fn proxy_setup_and_teardown() -> anyhow::Result<()> {
    let proxy = TestDb::new().await?;
    let mut partitions = Vec::new();
    for _ in 0..2 {
        let db = TestDb::new().await?;
        let mut client = db.client().await?;
        pgq_core::install(&mut client, &[pgq_core::Line::Pgq]).await?;
        pgq_core::create_queue(&client, &queue("orders")).await?;
        partitions.push(db);
    }
    let dsns: Vec<String> = partitions.iter().map(TestDb::dsn).collect();
    let args = |logical: &'static str| {
        let mut args = vec!["proxy-setup", "--logical", logical];
        for dsn in &dsns {
            args.extend(["--partition", dsn.as_str()]);
        }
        args
    };
    cli(&proxy, &args("3"), 1).await?;
    let out = cli(&proxy, &args("4"), 0).await?;
    assert!(!dsns.iter().any(|dsn| out.contains(dsn.as_str())), "{out}");
    cli(&proxy, &args("4"), 1).await?;

    let client = proxy.client().await?;
    for key in ["a", "b", "c", "d", "e"] {
        client
            .execute(
                "SELECT pgq_proxy.insert_event_by_key('orders', $1, 't', $1)",
                &[&key],
            )
            .await?;
        let target = pgq_core::partition::partition_of(key, 4) as usize % 2;
        let found: i64 = partitions[target]
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM pgq.event_template WHERE ev_data = $1",
                &[&key],
            )
            .await?
            .get(0);
        assert_eq!(found, 1, "{key}");
    }

    // Granting: a role that does not exist (with a hostile name) changes nothing, not even
    // for the roles named before it; then the producer role may insert through the proxy.
    pgq_testkit::create_role(&client, "pgq_cli_proxy_producer", "LOGIN").await?;
    let hostile = "x\"; DROP SCHEMA pgq_proxy CASCADE; --";
    let dsn = proxy.dsn();
    let (code, _, stderr) = run_binary(&[
        "--dsn",
        &dsn,
        "proxy-grant",
        "pgq_cli_proxy_producer",
        hostile,
    ])
    .await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (producer, connection) = pgq_core::tokio_postgres::connect(
        &proxy.dsn_as("pgq_cli_proxy_producer"),
        pgq_core::tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let insert = "SELECT pgq_proxy.insert_event_by_key('orders', 'k', 't', 'by the producer')";
    let refused = producer
        .execute(insert, &[])
        .await
        .expect_err("not granted");
    assert_eq!(
        refused.code(),
        Some(&pgq_core::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );
    cli(&proxy, &["proxy-grant", "pgq_cli_proxy_producer"], 0).await?;
    producer.execute(insert, &[]).await?;

    cli(&proxy, &["proxy-teardown"], 0).await?;
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgq_proxy'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(left, 0);
    Ok(())
}
