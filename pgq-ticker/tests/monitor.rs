//! The daemon's monitoring endpoint: `/metrics` in Prometheus' text format (parsed here by a
//! Prometheus text parser), `/health` flipping to 503 while the database is gone and back to
//! 200, the status page in a real browser, and the start-up errors of a bad `listen`.

use std::time::Duration;

use pgq_core::monitor::Monitor;
use pgq_core::tokio_postgres::Client;
use pgq_testkit::{http_get as get, TestDb};
use pgq_ticker::{Databases, Ticker, TickerConfig};
use tokio_util::sync::CancellationToken;

use crate::setup::{dsn, ours, queue_with, run_binary};

/// A ticker daemon on `db` observing every 100 ms, serving on a port of the system's choice.
async fn daemon(db: &TestDb) -> anyhow::Result<(std::net::SocketAddr, CancellationToken)> {
    let config = TickerConfig::builder(Databases::List(vec![dsn(&db.dsn())?]))
        .ticker_period(Duration::from_millis(50))
        .observe_period(Duration::from_millis(100))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()?;
    let monitor = Monitor::bind("127.0.0.1:0").await?;
    let address = monitor.local_addr()?;
    let cancel = CancellationToken::new();
    let ticker = Ticker::new(config);
    ticker.serve_monitor(monitor, cancel.clone());
    tokio::spawn(ticker.run(cancel.clone()));
    Ok((address, cancel))
}

async fn wait_for_health(address: std::net::SocketAddr, code: u16) -> anyhow::Result<String> {
    pgq_testkit::wait_for_health(address, code, Duration::from_secs(20)).await
}

async fn produce(client: &Client, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        client
            .execute(
                "SELECT pgq.insert_event('orders', 't', $1)",
                &[&i.to_string()],
            )
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn metrics_parse_and_health_follows_the_database() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    queue_with(&client, "orders", &["mailer"]).await?;
    produce(&client, 30).await?;
    let (address, cancel) = daemon(&db).await?;

    assert!(wait_for_health(address, 200).await?.starts_with("ok"));
    let (code, text) = get(address, "/metrics").await?;
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    let sample = |name: &str, label: (&str, &str)| {
        scrape.samples.iter().find(|s| {
            s.metric == name
                && s.labels.get("db") == Some(db.name())
                && s.labels.get(label.0) == Some(label.1)
        })
    };
    assert!(
        sample("pgq_ticker_ticks_total", ("db", db.name())).is_some(),
        "{text}"
    );
    assert!(
        sample("pgq_queue_tick_age_seconds", ("queue", "orders")).is_some(),
        "{text}"
    );
    assert!(
        sample("pgq_consumer_lag_seconds", ("consumer", "mailer")).is_some(),
        "{text}"
    );
    assert!(
        sample("pgq_consumer_pending_events", ("consumer", "mailer")).is_some(),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("pgq_ticker_pass_seconds")),
        "{text}"
    );

    // The database goes away: no connections, the ticker's own cut off.
    db.allow_connections(false).await?;
    let body = wait_for_health(address, 503).await?;
    assert!(
        body.contains(&format!("{}: not connected", db.name())),
        "{body}"
    );
    db.allow_connections(true).await?;
    wait_for_health(address, 200).await?;
    cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn the_status_page_shows_queues_and_consumers_in_a_browser() -> anyhow::Result<()> {
    let Some(browser) = pgq_testkit::browser()? else {
        return Ok(());
    };
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    queue_with(&client, "orders", &["mailer", "<script>x</script>"]).await?;
    produce(&client, 10).await?;
    let (address, cancel) = daemon(&db).await?;
    wait_for_health(address, 200).await?;

    let url = format!("http://{address}/");
    let page = browser.dump_dom(&url).await?;
    for text in [
        "pgq-ticker",
        db.name(),
        "orders",
        "mailer",
        "&lt;script&gt;x&lt;/script&gt;",
    ] {
        assert!(page.contains(text), "{text} missing from the page:\n{page}");
    }
    assert!(!page.contains("<script>x"), "a name was not escaped");
    let shot = browser.screenshot(&url, "pgq-ticker-status.png").await?;
    assert!(std::fs::metadata(&shot)?.len() > 1000, "{}", shot.display());
    cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn a_bad_or_taken_listen_address_stops_the_daemon_at_start() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = ours(&db).await?;
    let q = queue_with(&client, "orders", &[]).await?;
    let dsn = db.dsn();

    let (code, _, stderr) =
        run_binary(&["--dsn", &dsn, "run", "--listen", "not-an-address"]).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("ticker.listen: must be an address and port"),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.to_string();
    let before = crate::setup::tick_count(&client, &q).await?;
    let (code, _, stderr) = run_binary(&["--dsn", &dsn, "run", "--listen", &port]).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {port}")),
        "{stderr}"
    );
    assert_eq!(
        crate::setup::tick_count(&client, &q).await?,
        before,
        "nothing started: no tick"
    );
    Ok(())
}

/// The metric names in `text` that start with one of the project's prefixes.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("pgq_") || word.starts_with("londiste_"))
        .map(|word| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

/// Every metric the crates record (the name given to a `metrics` macro).
fn recorded_metrics(root: &std::path::Path) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut names = std::collections::BTreeSet::new();
    for dir in std::fs::read_dir(root)? {
        let src = dir?.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut pending = vec![src];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path)?;
                    for call in ["counter!(", "gauge!(", "histogram!("] {
                        for (at, _) in text.match_indices(call) {
                            let rest = text[at + call.len()..].trim_start();
                            if let Some(name) =
                                rest.strip_prefix('"').and_then(|r| r.split('"').next())
                            {
                                names.insert(name.to_owned());
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(names)
}

#[test]
fn the_operations_guide_and_the_dashboard_name_what_is_recorded() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join("docs/operations.md"))?;
    let documented: std::collections::BTreeSet<String> = guide
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|cell| cell.split(['`', '{']).next())
        .filter(|name| name.starts_with("pgq_") || name.starts_with("londiste_"))
        .map(str::to_owned)
        .collect();
    let recorded = recorded_metrics(&root)?;
    assert_eq!(
        documented, recorded,
        "docs/operations.md's tables and the metrics the code records differ"
    );

    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("docs/grafana/pgq-rs.json"),
    )?)?;
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut used = std::collections::BTreeSet::new();
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
    {
        used.extend(metric_names(target["expr"].as_str().expect("expr")));
    }
    let unknown: Vec<_> = used.difference(&recorded).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses unknown metrics {unknown:?}"
    );
    assert!(
        used.len() * 10 >= recorded.len() * 8,
        "the dashboard shows {} of {} metrics",
        used.len(),
        recorded.len()
    );
    Ok(())
}
