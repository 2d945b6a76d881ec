//! What each command does: build the configuration, call the library, print.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use pgq_core::monitor::Monitor;
use pgq_core::tokio_postgres::Client;
use pgq_core::{
    ConsumerName, Dsn, Line, MigrationOptions, QueueName, QueueSetting, SkipTarget, TickId,
};
use pgq_ticker::config::parse_duration;
use pgq_ticker::{Databases, Ticker, TickerConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::cli::{Admin, Cli, Command, ConnectArgs};
use crate::output::{json, opt, out, period, rows, secs, Table};

/// Runs the command; `Err` is printed as a chain of causes and exits with 1.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, listen } => daemon(config, listen, &cli.conn).await,
        Command::Sql { lines, from } => {
            for line in lines {
                out!("{}", pgq_core::migrations_sql(line.into(), from));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(command) => {
            let dsn = cli.conn.dsn()?;
            let mut client = dsn
                .connect()
                .await
                .with_context(|| format!("cannot connect to {dsn}"))?;
            admin(command, &mut client).await
        }
    }
}

impl ConnectArgs {
    /// `--dsn`/`PGQ_DSN`, else `DATABASE_URL` or the libpq variables, else libpq's defaults.
    fn dsn(&self) -> anyhow::Result<Dsn> {
        Ok(match &self.dsn {
            Some(text) => Dsn::parse(text).context("--dsn")?,
            None => match Dsn::from_env()? {
                Some(dsn) => dsn,
                None => Dsn::parse("")?,
            },
        })
    }
}

/// The daemon in the foreground, until SIGTERM or SIGINT; SIGHUP reloads the configuration.
async fn daemon(
    path: Option<PathBuf>,
    listen: Option<String>,
    conn: &ConnectArgs,
) -> anyhow::Result<ExitCode> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let load = || -> anyhow::Result<TickerConfig> {
        let config = match &path {
            Some(path) => TickerConfig::load(path)?,
            None => TickerConfig::builder(Databases::List(vec![conn.dsn()?])).build()?,
        };
        Ok(match &listen {
            Some(address) => config.to_builder().listen(address.clone()).build()?,
            None => config,
        })
    };
    let mut config = load()?;
    loop {
        let cancel = CancellationToken::new();
        let ticker = Ticker::new(config.clone());
        // Bound before the ticker starts: a bad or taken address stops the daemon here.
        let server = match config.listen() {
            Some(address) => {
                let monitor = Monitor::bind(address).await?;
                tracing::info!(listen = %monitor.local_addr()?, "serving /metrics, /health and /");
                Some(ticker.serve_monitor(monitor, cancel.clone()))
            }
            None => None,
        };
        let mut running = tokio::spawn(ticker.run(cancel.clone()));
        let mut stopping = false;
        let mut reload = None;
        loop {
            let signo = tokio::select! {
                done = &mut running => {
                    done.context("the ticker task failed")?;
                    break;
                }
                _ = term.recv() => 15,
                _ = int.recv() => 2,
                _ = hup.recv() => {
                    if stopping {
                        continue;
                    }
                    match load() {
                        Ok(new) => {
                            tracing::info!("configuration reloaded; restarting the ticker");
                            reload = Some(new);
                            cancel.cancel();
                        }
                        Err(err) => tracing::error!(
                            error = format!("{err:#}"),
                            "cannot reload the configuration; keeping the current one"
                        ),
                    }
                    continue;
                }
            };
            if stopping {
                tracing::warn!("second stop signal: exiting at once");
                std::process::exit(128 + signo);
            }
            tracing::info!("stopping (send the signal again to exit at once)");
            stopping = true;
            reload = None;
            cancel.cancel();
        }
        if let Some(server) = server {
            server.await.context("the monitoring endpoint failed")?;
        }
        match reload {
            Some(new) => config = new,
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// The one-shot commands on one connection.
async fn admin(command: Admin, client: &mut Client) -> anyhow::Result<ExitCode> {
    match command {
        Admin::Install { lines } => {
            let lines: Vec<Line> = lines.into_iter().map(Line::from).collect();
            let report = pgq_core::install(client, &lines).await?;
            out!("{report}");
        }
        Admin::MigrateFromExtension {
            dry_run,
            lock_timeout,
        } => {
            let mut options = MigrationOptions::new().dry_run(dry_run);
            if let Some(limit) = lock_timeout {
                options = options.lock_timeout(limit);
            }
            let report = pgq_core::migrate_from_extension(client, options).await?;
            out!("{report}");
        }
        Admin::ProxySetup {
            partitions,
            logical,
        } => {
            pgq_core::partition::setup_proxy(client, &partitions, logical).await?;
            out!(
                "proxy set up: {logical} logical partitions over {} databases",
                partitions.len()
            );
        }
        Admin::ProxyGrant { roles } => {
            pgq_core::partition::grant_proxy(client, &roles).await?;
            out!("granted the proxy to {}", roles.join(", "));
        }
        Admin::ProxyTeardown => {
            pgq_core::partition::teardown_proxy(client).await?;
            out!("proxy removed");
        }
        Admin::CreateQueue { queue } => {
            let queue = QueueName::new(queue)?;
            pgq_core::create_queue(&*client, &queue).await?;
            out!("created queue {queue}");
        }
        Admin::DropQueue { queue, force } => {
            let queue = QueueName::new(queue)?;
            pgq_core::drop_queue(&*client, &queue, force).await?;
            out!("dropped queue {queue}");
        }
        Admin::Config { queue, settings } => {
            let queue = QueueName::new(queue)?;
            if settings.is_empty() {
                show_config(client, &queue).await?;
            } else {
                let parsed = settings
                    .iter()
                    .map(|pair| parse_setting(pair).with_context(|| format!("setting {pair:?}")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let tx = client.transaction().await?;
                for setting in parsed {
                    pgq_core::set_queue_config(&tx, &queue, setting).await?;
                }
                tx.commit().await?;
                for pair in &settings {
                    out!("{queue}: set {pair}");
                }
            }
        }
        Admin::Register { queue, consumer } => {
            let queue = QueueName::new(queue)?;
            let consumer = ConsumerName::new(consumer)?;
            if pgq_core::register_consumer(&*client, &queue, &consumer).await? {
                out!("registered {consumer} on {queue}");
            } else {
                out!("{consumer} was already registered on {queue}");
            }
        }
        Admin::Unregister { queue, consumer } => {
            let queue = QueueName::new(queue)?;
            let consumer = ConsumerName::new(consumer)?;
            pgq_core::unregister_consumer(&*client, &queue, &consumer).await?;
            out!("unregistered {consumer} from {queue}");
        }
        Admin::Status {
            max_tick_age,
            json: as_json,
        } => {
            let status = pgq_ticker::database_status(&*client).await?;
            let problems = status.problems(max_tick_age);
            if as_json {
                json(&serde_json::json!({
                    "status": status,
                    "problems": problems,
                    "ok": problems.is_empty(),
                }))?;
            } else {
                print_status(&status)?;
                for problem in &problems {
                    out!("PROBLEM: {problem}");
                }
            }
            if !problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Admin::Backlog {
            queue,
            exact: true,
            json: as_json,
        } => {
            let queue = queue.map(QueueName::new).transpose()?;
            let backlog = pgq_core::consumer_backlog_exact(&*client, queue.as_ref(), None).await?;
            let headers = [
                "queue",
                "consumer",
                "last tick",
                "ticked",
                "not yet ticked",
                "retry",
                "events",
            ];
            rows(&backlog, as_json, &headers, |b| {
                vec![
                    b.queue_name.clone(),
                    b.consumer_name.clone(),
                    b.last_tick_id.to_string(),
                    b.ticked_events.to_string(),
                    b.unticked_events.to_string(),
                    b.retry_events.to_string(),
                    b.pending_events.to_string(),
                ]
            })?;
        }
        Admin::Backlog {
            queue,
            exact: false,
            json: as_json,
        } => {
            let queue = queue.map(QueueName::new).transpose()?;
            let backlog = pgq_core::backlog_report(&*client, queue.as_ref()).await?;
            let headers = [
                "queue",
                "consumer",
                "last tick",
                "lag",
                "ready ticks",
                "~events waiting",
                "~not yet ticked",
                "batch cap",
                "~batches",
            ];
            let now = chrono::Utc::now();
            rows(&backlog, as_json, &headers, |b| {
                vec![
                    b.queue.clone(),
                    b.consumer.clone(),
                    b.last_tick.to_string(),
                    secs(b.last_tick_time.map(|t| seconds_since(now, t))),
                    b.pending_ticks.to_string(),
                    opt(b.events_since_last_tick),
                    opt(b.events_since_newest_tick),
                    opt(b.ticker_max_batch.map(i64::from)),
                    b.batches.to_string(),
                ]
            })?;
        }
        Admin::Ticks {
            queue,
            limit,
            json: as_json,
        } => {
            let queue = QueueName::new(queue)?;
            let ticks = pgq_core::recent_ticks(&*client, &queue, limit).await?;
            let headers = ["tick", "time", "event seq", "events", "snapshot"];
            rows(&ticks, as_json, &headers, |t| {
                vec![
                    t.tick_id.to_string(),
                    t.tick_time.format("%Y-%m-%d %H:%M:%S%.3f%:z").to_string(),
                    t.event_seq.to_string(),
                    opt(t.events),
                    shorten(&t.snapshot, 48),
                ]
            })?;
        }
        Admin::Skip {
            queue,
            consumer,
            target,
            dry_run,
            exact,
            json: as_json,
        } => {
            let queue = QueueName::new(queue)?;
            let consumer = ConsumerName::new(consumer)?;
            let target = match target.to_tick {
                Some(tick) => SkipTarget::Tick(TickId(tick)),
                None => SkipTarget::Head,
            };
            let tx = client.transaction().await?;
            let report =
                pgq_core::skip_consumer(&tx, &queue, &consumer, target, dry_run, exact).await?;
            tx.commit().await?;
            if as_json {
                json(&report)?;
            } else {
                let verb = if report.applied {
                    "moved"
                } else {
                    "would move (dry run)"
                };
                out!(
                    "{verb} {} on {} from tick {} to tick {}",
                    report.consumer,
                    report.queue,
                    report.from_tick,
                    report.to_tick
                );
                out!("ticks skipped:  {}", report.ticks_skipped);
                out!(
                    "events skipped: {} (by event sequence)",
                    opt(report.events_skipped)
                );
                if let Some(exact) = report.events_exact {
                    out!("events skipped: {exact} (counted in the event tables)");
                }
                if let Some(batch) = report.dropped_batch {
                    out!("open batch {batch} dropped");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_config(client: &Client, queue: &QueueName) -> anyhow::Result<()> {
    let info = pgq_core::queue_info(client, Some(queue))
        .await?
        .pop()
        .ok_or_else(|| pgq_core::Error::QueueNotFound {
            queue: queue.to_string(),
        })?;
    let mut table = Table::new(&["setting", "value"]);
    for (key, value) in [
        ("ticker_max_count", info.ticker_max_count.to_string()),
        ("ticker_max_batch", opt(info.ticker_max_batch)),
        ("ticker_max_lag", period(info.ticker_max_lag)),
        ("ticker_idle_period", period(info.ticker_idle_period)),
        ("ticker_paused", info.ticker_paused.to_string()),
        ("rotation_period", period(info.rotation_period)),
        ("external_ticker", info.external_ticker.to_string()),
        ("ntables", info.ntables.to_string()),
        ("cur_table", info.cur_table.to_string()),
        ("switch_time", info.switch_time.to_rfc3339()),
    ] {
        table.row(vec![key.to_owned(), value]);
    }
    table.print()?;
    Ok(())
}

/// `key=value` as a queue setting; keys may carry PGQ's `queue_` prefix.
fn parse_setting(pair: &str) -> anyhow::Result<QueueSetting> {
    let (key, value) = pair.split_once('=').context("expected key=value")?;
    let key = key.trim();
    let key = key.strip_prefix("queue_").unwrap_or(key);
    let value = value.trim();
    let period = || parse_duration(value).map_err(anyhow::Error::msg);
    Ok(match key {
        "ticker_max_count" => QueueSetting::TickerMaxCount(value.parse()?),
        "ticker_max_batch" => QueueSetting::TickerMaxBatch(value.parse()?),
        "ticker_max_lag" => QueueSetting::TickerMaxLag(period()?),
        "ticker_idle_period" => QueueSetting::TickerIdlePeriod(period()?),
        "ticker_paused" => QueueSetting::TickerPaused(parse_bool(value)?),
        "rotation_period" => QueueSetting::RotationPeriod(period()?),
        "external_ticker" => QueueSetting::ExternalTicker(parse_bool(value)?),
        "disable_insert" => QueueSetting::DisableInsert(parse_bool(value)?),
        "per_tx_limit" => QueueSetting::PerTxLimit(match value {
            "" | "none" | "null" => None,
            n => Some(n.parse()?),
        }),
        other => anyhow::bail!(
            "unknown setting {other:?} (ticker_max_count, ticker_max_batch, ticker_max_lag, \
             ticker_idle_period, ticker_paused, rotation_period, external_ticker, \
             disable_insert, per_tx_limit)"
        ),
    })
}

fn parse_bool(value: &str) -> anyhow::Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        other => anyhow::bail!("{other:?} is not a boolean (true or false)"),
    }
}

fn print_status(status: &pgq_ticker::DatabaseStatus) -> std::io::Result<()> {
    let ticker = match &status.ticker {
        Some(t) => format!(
            "ticked by pid {} ({}{}{})",
            t.pid,
            if t.application_name.is_empty() {
                "no application_name"
            } else {
                &t.application_name
            },
            t.client_addr
                .as_deref()
                .map(|a| format!(" from {a}"))
                .unwrap_or_default(),
            t.backend_start
                .map(|s| format!(", connected {}", s.format("%Y-%m-%d %H:%M:%S%:z")))
                .unwrap_or_default(),
        ),
        None => "NO TICKER holds this database".to_owned(),
    };
    out!("database {} ({}): {ticker}", status.db, status.flavor);
    out!();
    let mut queues = Table::new(&[
        "queue",
        "newest tick",
        "tick age",
        "events/s",
        "~not yet ticked",
        "max count",
        "ticker",
    ]);
    let mut consumers = Table::new(&[
        "queue",
        "consumer",
        "lag",
        "last seen",
        "last tick",
        "batch",
        "~pending events",
    ]);
    for q in &status.queues {
        let ticker = if q.external_ticker {
            "external"
        } else if q.ticker_paused {
            "paused"
        } else {
            "on"
        };
        queues.row(vec![
            q.queue.clone(),
            opt(q.newest_tick),
            secs(q.tick_age_secs),
            q.events_per_sec
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
            opt(q.events_since_tick),
            q.ticker_max_count.to_string(),
            ticker.to_owned(),
        ]);
        for c in &q.consumers {
            consumers.row(vec![
                q.queue.clone(),
                c.consumer.clone(),
                secs(c.lag_secs),
                secs(c.last_seen_secs),
                opt(c.last_tick),
                opt(c.current_batch),
                opt(c.pending_events),
            ]);
        }
    }
    queues.print()?;
    out!();
    consumers.print()
}

fn seconds_since(now: chrono::DateTime<chrono::Utc>, then: chrono::DateTime<chrono::Utc>) -> f64 {
    (now - then)
        .num_microseconds()
        .map_or(f64::INFINITY, |us| us as f64 / 1e6)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(max.saturating_sub(3)).collect();
        short.push_str("...");
        short
    }
}
