//! The real `pgq-ticker run`: signals, configuration errors, bad databases.

use std::time::{Duration, Instant};

use pgq_core::tokio_postgres::Client;
use pgq_testkit::{TempDir, TestDb};

use crate::setup::{ours, queue_with, run_binary, spawn_ticker, tick_count, ticked, wait_for};

/// Waits until a pgq-ticker session of this database waits for a lock.
async fn wait_until_blocked(client: &Client) -> anyhow::Result<()> {
    wait_for(
        "the ticker pass to block",
        Duration::from_secs(15),
        || async {
            Ok(client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'pgq-ticker'
                    AND wait_event_type = 'Lock'",
                    &[],
                )
                .await?
                .get::<_, i64>(0)
                == 1)
        },
    )
    .await
}

#[tokio::test]
async fn sigterm_in_the_middle_of_a_pass_stops_cleanly_within_a_second() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    let q = queue_with(&client, "q", &[]).await?;
    pgq_core::insert_event(&client, &q, "t", "1").await?;
    let ticks = tick_count(&client, &q).await?;

    // Block the pass: writing a tick needs a lock this transaction holds.
    let mut blocker = db.client().await?;
    let tx = blocker.transaction().await?;
    tx.batch_execute("LOCK TABLE pgq.tick IN EXCLUSIVE MODE")
        .await?;

    let dsn = db.dsn();
    let mut daemon = spawn_ticker(&["--dsn", &dsn, "run"])?;
    wait_until_blocked(&client).await?;
    let start = Instant::now();
    daemon.signal("TERM")?;
    let status = daemon.exit(Duration::from_secs(3)).await?;
    let took = start.elapsed();
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}; log:\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("stopping"), "{}", daemon.log());

    // A second signal does not wait at all (a soft stop here would wait for 30 s).
    let dir = TempDir::new("pgq-ticker")?;
    let config = dir.write(
        "ticker.toml",
        &format!("[ticker]\ndatabases = ['{dsn}']\nstop_timeout = \"30s\"\n"),
    )?;
    let mut impatient = spawn_ticker(&["run", "-c", &config.display().to_string()])?;
    wait_until_blocked(&client).await?;
    impatient.signal("TERM")?;
    wait_for("the soft stop to begin", Duration::from_secs(5), || async {
        Ok(impatient.log().contains("stopping"))
    })
    .await?;
    impatient.signal("TERM")?;
    let status = impatient.exit(Duration::from_secs(1)).await?;
    assert_eq!(status.code(), Some(143), "log:\n{}", impatient.log());

    tx.rollback().await?;
    // The cancelled pass was rolled back; the abandoned one may still commit once unblocked.
    let after = tick_count(&client, &q).await?;
    assert!(after <= ticks + 1, "{after} ticks");
    Ok(())
}

#[tokio::test]
async fn config_errors_name_the_file_line_and_key() -> anyhow::Result<()> {
    let (code, _, stderr) = run_binary(&["run", "-c", "/nonexistent/ticker.toml"]).await?;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read config file /nonexistent/ticker.toml"),
        "{stderr}"
    );

    let dir = TempDir::new("pgq-ticker")?;
    let path = dir
        .write(
            "fortnight.toml",
            "[ticker]\ndatabases = [\"host=/tmp user=u\"]\nticker_period = \"1 fortnight\"\n",
        )?
        .display()
        .to_string();
    let (code, _, stderr) = run_binary(&["run", "-c", &path]).await?;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{path}:3:17: key `ticker.ticker_period`: ")),
        "{stderr}"
    );

    let path = dir
        .write(
            "period.toml",
            "[ticker]\ndatabases = [\"host=/tmp user=u\"]\nperiod = 1\n",
        )?
        .display()
        .to_string();
    let (code, _, stderr) = run_binary(&["run", "-c", &path]).await?;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{path}:3:1: key `ticker.period`: unknown field")),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_databases_are_retried_or_skipped_while_good_ones_tick() -> anyhow::Result<()> {
    let good = TestDb::new().await?;
    let client = ours(&good).await?;
    let q = queue_with(&client, "q", &[]).await?;
    let plain = TestDb::new().await?;
    let dir = TempDir::new("pgq-ticker")?;
    let config = dir.write(
        "ticker.toml",
        &format!(
            "[ticker]
databases = [
    '{}',
    '{}',
    'host=127.0.0.1 port=1 user=postgres dbname=nowhere',
]
ticker_period = \"50ms\"
discovery_period = \"100ms\"
reconnect_min = \"20ms\"
reconnect_max = \"100ms\"
",
            good.dsn(),
            plain.dsn()
        ),
    )?;
    let mut daemon = spawn_ticker(&["run", "-c", &config.display().to_string()])?;

    let before = tick_count(&client, &q).await?;
    pgq_core::insert_event(&client, &q, "t", "1").await?;
    wait_for(
        "a tick on the good database",
        Duration::from_secs(10),
        || async { Ok(tick_count(&client, &q).await? > before) },
    )
    .await?;
    // At 100 ms per retry, ten retries cover several discovery periods of the plain database.
    wait_for(
        "retries of the unreachable database",
        Duration::from_secs(10),
        || async { Ok(daemon.count(&["nowhere", "cannot connect; retrying"]) >= 10) },
    )
    .await?;
    assert_eq!(
        daemon.count(&[plain.name(), "no pgq schema"]),
        1,
        "{}",
        daemon.log()
    );

    daemon.signal("TERM")?;
    let status = daemon.exit(Duration::from_secs(2)).await?;
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
    Ok(())
}

/// A configuration with short periods serving one database.
fn one_database(dsn: &str) -> String {
    format!(
        "[ticker]\ndatabases = ['{dsn}']\nticker_period = \"50ms\"\nreconnect_min = \"20ms\"\n\
         reconnect_max = \"100ms\"\n"
    )
}

#[tokio::test]
async fn sighup_reloads_the_configuration() -> anyhow::Result<()> {
    let (a, b) = (TestDb::new().await?, TestDb::new().await?);
    let (client_a, client_b) = (ours(&a).await?, ours(&b).await?);
    let (qa, qb) = (
        queue_with(&client_a, "q", &[]).await?,
        queue_with(&client_b, "q", &[]).await?,
    );
    let dir = TempDir::new("pgq-ticker")?;
    let config = dir.write("ticker.toml", &one_database(&a.dsn()))?;
    let mut daemon = spawn_ticker(&["run", "-c", &config.display().to_string()])?;
    ticked(&client_a, &qa).await?;

    dir.write("ticker.toml", &one_database(&b.dsn()))?;
    daemon.signal("HUP")?;
    ticked(&client_b, &qb).await?;
    wait_for(
        "the first database to be let go",
        Duration::from_secs(10),
        || async {
            Ok(pgq_ticker::database_status(&client_a)
                .await?
                .ticker
                .is_none())
        },
    )
    .await?;

    dir.write("ticker.toml", "[ticker]\nticker_period = 1\n")?;
    daemon.signal("HUP")?;
    wait_for("the reload to fail", Duration::from_secs(10), || async {
        Ok(daemon.log().contains("cannot reload the configuration"))
    })
    .await?;
    ticked(&client_b, &qb).await?;

    daemon.signal("TERM")?;
    let status = daemon.exit(Duration::from_secs(2)).await?;
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
    Ok(())
}
