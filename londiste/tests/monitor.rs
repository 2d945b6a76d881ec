//! The replay worker's monitoring: `/metrics` parsed by a Prometheus text parser with the rows
//! really replayed, `/health` flipping to 503 while either database is gone and back to 200,
//! the status page in a real browser, and the start-up errors of a bad `listen`.
//!
//! The Prometheus recorder is the process's: other tests' workers record into it too, so
//! these tests use consumer and table names of their own.

use std::net::SocketAddr;
use std::time::Duration;

use londiste::{AddTableOptions, Worker};
use pgq_consumer::CancellationToken;
use pgq_core::monitor::Monitor;
use pgq_core::ConsumerName;
use pgq_testkit::{http_get, TempDir, TestDb};

use crate::common::Pair;

const HEALTH_WAIT: Duration = Duration::from_secs(30);

/// A pair whose worker is `consumer`, observing every 100 ms, with `table` (id, v) replicated
/// (empty when added).
async fn pair_with(consumer: &str, table: &str) -> anyhow::Result<Pair> {
    let mut pair = Pair::new().await?;
    pair.config.consumer = Some(ConsumerName::new(consumer)?);
    pair.config.observe_period = Duration::from_millis(100);
    londiste::init(&pair.config).await?;
    pair.provider
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v text)"
        ))
        .await?;
    let options = AddTableOptions {
        create: true,
        ..AddTableOptions::default()
    };
    londiste::add_tables(&pair.config, &[table.to_owned()], &options).await?;
    Ok(pair)
}

/// Starts the worker, serving on a port of the system's choice.
async fn serve(pair: &Pair) -> anyhow::Result<(SocketAddr, CancellationToken)> {
    let monitor = Monitor::bind("127.0.0.1:0").await?;
    let address = monitor.local_addr()?;
    let cancel = CancellationToken::new();
    let worker = Worker::connect(&pair.config).await?;
    worker.serve_monitor(monitor, cancel.clone());
    tokio::spawn(worker.run(cancel.clone()));
    Ok((address, cancel))
}

/// Runs `sql` on the provider, ticks, and waits until the subscriber's `table` has `rows`.
async fn replay(pair: &Pair, sql: &str, table: &str, rows: i64) -> anyhow::Result<()> {
    pair.provider.batch_execute(sql).await?;
    pair.tick().await?;
    let count = format!("SELECT count(*) FROM {table}");
    pgq_testkit::wait_for(
        &format!("{rows} rows in the subscriber's {table}"),
        Duration::from_secs(30),
        || async {
            Ok(pair
                .subscriber
                .query_one(&count, &[])
                .await?
                .get::<_, i64>(0)
                == rows)
        },
    )
    .await
}

/// Takes `db` away (no new connections, every session cut off), waits for `/health` to fail
/// naming `side`, gives it back and waits for 200.
async fn outage(address: SocketAddr, db: &TestDb, side: &str) -> anyhow::Result<()> {
    db.allow_connections(false).await?;
    let body = pgq_testkit::wait_for_health(address, 503, HEALTH_WAIT).await?;
    assert!(body.contains(&format!("{side}: not connected")), "{body}");
    db.allow_connections(true).await?;
    pgq_testkit::wait_for_health(address, 200, HEALTH_WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn metrics_count_the_rows_replayed_and_health_follows_both_databases() -> anyhow::Result<()> {
    let mut pair = pair_with("monitored", "watched").await?;
    let (address, cancel) = serve(&pair).await?;
    assert!(pgq_testkit::wait_for_health(address, 200, HEALTH_WAIT)
        .await?
        .starts_with("ok"));

    // Three batches: 30 inserts, 10 updates, 5 deletes.
    replay(
        &pair,
        "INSERT INTO watched SELECT g, 'v' || g FROM generate_series(1, 30) g",
        "watched",
        30,
    )
    .await?;
    replay(
        &pair,
        "UPDATE watched SET v = 'new' WHERE id <= 10",
        "watched",
        30,
    )
    .await?;
    pgq_testkit::wait_for("the updates replayed", HEALTH_WAIT, || async {
        let updated: i64 = pair
            .subscriber
            .query_one("SELECT count(*) FROM watched WHERE v = 'new'", &[])
            .await?
            .get(0);
        Ok(updated == 10)
    })
    .await?;
    replay(&pair, "DELETE FROM watched WHERE id > 25", "watched", 25).await?;
    pair.assert_same("watched", "id").await?;

    let (code, text) = http_get(address, "/metrics").await?;
    assert_eq!(code, 200);
    let value = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("queue", "replica"), ("consumer", "monitored")];
        all.extend_from_slice(labels);
        pgq_testkit::prometheus_value(&text, name, &all)
    };
    let applied = |op| {
        value(
            "pgq_londiste_applied_rows_total",
            &[("table", "public.watched"), ("op", op)],
        )
    };
    assert_eq!(
        (applied("I")?, applied("U")?, applied("D")?),
        (30.0, 10.0, 5.0),
        "{text}"
    );
    assert_eq!(value("pgq_runner_events_total", &[])?, 45.0, "{text}");
    let batches = value("pgq_londiste_batches_total", &[])?;
    assert!(batches >= 3.0, "{text}");
    assert_eq!(value("pgq_londiste_apply_seconds_count", &[])?, batches);
    assert!(value("pgq_londiste_lag_seconds", &[])? >= 0.0);
    assert!(value("pgq_londiste_pending_events", &[])? >= 0.0);
    assert_eq!(
        value("pgq_londiste_tables", &[("state", "ok")])?,
        1.0,
        "{text}"
    );
    assert_eq!(
        value("pgq_londiste_connected", &[("db", "subscriber")])?,
        1.0
    );

    outage(address, &pair.dbs.1, "subscriber").await?;
    outage(address, &pair.dbs.0, "provider").await?;
    // Replay goes on after both outages (which cut the test's own sessions too).
    pair.provider = pair.dbs.0.client().await?;
    pair.subscriber = pair.dbs.1.client().await?;
    replay(
        &pair,
        "INSERT INTO watched VALUES (100, 'after')",
        "watched",
        26,
    )
    .await?;
    cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn health_fails_while_the_lag_is_over_max_lag() -> anyhow::Result<()> {
    let mut pair = pair_with("laggard", "lagged").await?;
    // Any lag is too much: the age of the worker's last tick is never zero.
    pair.config.max_lag = Duration::ZERO;
    let (address, cancel) = serve(&pair).await?;
    // 503 from the start (not observed yet), then for the lag alone.
    let deadline = pgq_testkit::Deadline::after(HEALTH_WAIT);
    loop {
        let (code, body) = http_get(address, "/health").await?;
        assert_eq!(code, 503, "{body}");
        if body.contains("lag is") {
            assert!(body.contains("(over 0s)"), "{body}");
            assert_eq!(body.lines().count(), 1, "{body}");
            break;
        }
        deadline
            .pause(format!("/health to name the lag: {body}"))
            .await?;
    }
    cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn the_status_page_shows_the_worker_and_its_tables_in_a_browser() -> anyhow::Result<()> {
    let Some(browser) = pgq_testkit::browser()? else {
        return Ok(());
    };
    let pair = pair_with("<script>x</script>", "paged_orders").await?;
    let (address, cancel) = serve(&pair).await?;
    replay(
        &pair,
        "INSERT INTO paged_orders VALUES (1, 'one')",
        "paged_orders",
        1,
    )
    .await?;
    pgq_testkit::wait_for_health(address, 200, HEALTH_WAIT).await?;

    let url = format!("http://{address}/");
    let page = browser.dump_dom(&url).await?;
    for text in [
        "londiste worker",
        "replica",
        "&lt;script&gt;x&lt;/script&gt;",
        "public.paged_orders",
        "<td>ok</td>",
        "Healthy.",
        "<svg",
    ] {
        assert!(page.contains(text), "{text} missing from the page:\n{page}");
    }
    assert!(!page.contains("<script>x"), "a name was not escaped");
    let shot = browser
        .screenshot(&url, "londiste-worker-status.png")
        .await?;
    assert!(std::fs::metadata(&shot)?.len() > 1000, "{}", shot.display());
    cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn a_bad_or_taken_listen_address_stops_the_worker_at_start() -> anyhow::Result<()> {
    let pair = pair_with("listener", "listened").await?;
    pair.provider
        .batch_execute("INSERT INTO listened VALUES (1, 'waits')")
        .await?;
    pair.tick().await?;
    let dir = TempDir::new("londiste-listen")?;
    let file = dir.write(
        "londiste.toml",
        &format!(
            "[londiste]\nprovider = {:?}\nsubscriber = {:?}\nqueue = \"replica\"\nconsumer = \"listener\"\n",
            pair.dbs.0.dsn(),
            pair.dbs.1.dsn()
        ),
    )?;
    let config = file.to_str().unwrap_or_default();
    let worker = |listen: String| async move {
        pgq_testkit::run(
            env!("CARGO_BIN_EXE_londiste"),
            &["--config", config, "worker", "--listen", &listen],
        )
        .await
    };

    let (code, _, stderr) = worker("not-an-address".to_owned()).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("listen = \"not-an-address\" is not an address and port"),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.to_string();
    let (code, _, stderr) = worker(port.clone()).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {port}")),
        "{stderr}"
    );

    // Nothing started: the worker never applied a batch, nor recorded a position.
    let rows: i64 = pair
        .subscriber
        .query_one("SELECT count(*) FROM listened", &[])
        .await?
        .get(0);
    let positions: i64 = pair
        .subscriber
        .query_one(
            "SELECT count(*) FROM londiste_rs.worker_position
              WHERE consumer_name = 'listener' AND last_tick IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    assert_eq!((rows, positions), (0, 0));
    Ok(())
}
