//! The `londiste` command: set up table replication and run the replay worker.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use londiste::{
    AddTableOptions, Config, CopyProgress, ResyncOptions, SeedOptions, SeedTables, Seeded,
    TableState,
};
use pgq_consumer::CancellationToken;
use pgq_core::monitor::Monitor;
use tracing_subscriber::EnvFilter;

/// Table replication through a PGQ queue.
#[derive(Debug, Parser)]
#[command(name = "londiste", version)]
struct Cli {
    /// The config file (TOML: provider, subscriber, queue, consumer).
    #[arg(short, long, default_value = "londiste.toml")]
    config: PathBuf,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `londiste=debug`.
    #[arg(long, default_value = "info", env = "LONDISTE_LOG")]
    log: String,

    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the schema on both sides, create the queue, register the worker.
    Init,
    /// Replicate tables: capture trigger, consistent initial copy, then catch up.
    AddTable {
        /// Provider tables (`schema.table`; quote mixed case as SQL does).
        #[arg(required = true)]
        tables: Vec<String>,
        #[command(flatten)]
        options: AddTableArgs,
    },
    /// Stop replicating a table (the subscriber table stays).
    RemoveTable {
        /// Provider tables.
        #[arg(required = true)]
        tables: Vec<String>,
    },
    /// Replicate sequence values (copied forward with every batch).
    AddSeq {
        /// Sequences, existing on both sides.
        #[arg(required = true)]
        sequences: Vec<String>,
    },
    /// The replicated tables and their states.
    Tables,
    /// Lag, pending events, the last batch, the tables.
    Status,
    /// Run the replay worker until SIGTERM or SIGINT.
    Worker {
        /// Serve /metrics, /health and a status page on this address (`host:port`); overrides
        /// the file's `worker.listen`.
        #[arg(long, env = "LONDISTE_LISTEN")]
        listen: Option<String>,
    },
    /// Compare tables on both sides at one tick (all `ok` tables by default); exit code 1 when
    /// they differ.
    Compare {
        /// One provider table.
        table: Option<String>,
        /// Name the differing rows by primary key (reads the rows of the key buckets whose
        /// sums differ).
        #[arg(long)]
        rows: bool,
    },
    /// Make the subscriber's rows the provider's at one tick, one transaction per table, and
    /// list what changed.
    Repair {
        /// One provider table (all `ok` tables by default).
        table: Option<String>,
    },
    /// List drift: triggers, columns, keys, registrations, states (exit code 1 on errors).
    Check,
    /// Run DDL scripts on the provider and queue them: the worker runs each on the subscriber
    /// at the same point of the change stream. A file runs once (recorded by its name).
    Execute {
        /// SQL files, each run in one transaction.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Make the subscriber from a base backup of the provider, at an exact position: no table
    /// is copied row by row (docs/seeding.md). Tables named, or every keyed table of --schema.
    Seed {
        /// Provider tables (`schema.table`).
        #[arg(required_unless_present = "schema", conflicts_with = "schema")]
        tables: Vec<String>,
        /// Every table with a primary key in this schema.
        #[arg(long)]
        schema: Option<String>,
        #[command(flatten)]
        target: SeedArgs,
        /// Prepare the copy and stop: start it yourself, then run `londiste seed-finish`.
        #[arg(long)]
        no_start: bool,
        /// Connections that copy files in parallel.
        #[arg(short, long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
    },
    /// Finish a seed made with --no-start, once you started the copy (it waits on its private
    /// socket); leaves it stopped, ready to start as the subscriber.
    SeedFinish {
        #[command(flatten)]
        target: SeedArgs,
    },
    /// Abandon seeds of the queue that wait for seed-finish or were killed: unregister their
    /// consumers (so the queue rotates again) and remove their plans.
    SeedCancel,
    /// Copy a table again and catch up.
    Resync {
        /// The provider table.
        table: String,
        /// Connections copying key ranges in parallel.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        parallel_copy: u32,
        /// Seconds to wait for `ok` while a worker runs.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

/// How `add-table` copies and registers the tables.
#[derive(Debug, clap::Args)]
struct AddTableArgs {
    /// Create the subscriber table when missing.
    #[arg(long)]
    create: bool,
    /// The subscriber already has the rows: no copy.
    #[arg(long)]
    skip_copy: bool,
    /// Copy only rows matching this SQL condition.
    #[arg(long, value_name = "SQL")]
    copy_condition: Option<String>,
    /// The subscriber table's name (one table only).
    #[arg(long, value_name = "NAME")]
    dest_table: Option<String>,
    /// Connections copying key ranges in parallel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    parallel_copy: u32,
    /// Record primary-key changes so the worker follows them (pgq-rs triggers only).
    #[arg(long)]
    follow_key_changes: bool,
    /// Seconds to wait for `ok` while a worker runs.
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

/// Where a seed's copy goes and how its server is run.
#[derive(Debug, clap::Args)]
struct SeedArgs {
    /// The copy's data directory (new or empty).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The port the copy listens on (the config's subscriber must point there).
    #[arg(long)]
    port: u16,
    /// The PostgreSQL programs of the provider's version (default: found).
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// Run the copy's server as this operating system user (when londiste runs as root).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Limit the backup's reads on the provider (bytes per second; k, M, G suffixes).
    #[arg(long, value_name = "RATE", value_parser = pgq_basebackup::parse_rate)]
    max_rate: Option<u64>,
}

impl SeedArgs {
    fn options(self, start: bool, jobs: u16) -> SeedOptions {
        SeedOptions {
            data_dir: self.data_dir,
            port: self.port,
            start,
            jobs: usize::from(jobs),
            bin_dir: self.pg_bin,
            run_as: self.run_as,
            max_rate: self.max_rate,
        }
    }
}

impl From<AddTableArgs> for AddTableOptions {
    fn from(args: AddTableArgs) -> AddTableOptions {
        AddTableOptions {
            create: args.create,
            skip_copy: args.skip_copy,
            copy_condition: args.copy_condition,
            dest_table: args.dest_table,
            parallel_copy: args.parallel_copy,
            follow_key_changes: args.follow_key_changes,
            wait: Duration::from_secs(args.wait),
            progress: Arc::default(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` while a bar on stderr (drawn only on a terminal) shows the copy's counters.
async fn with_progress<T>(progress: &CopyProgress, work: impl Future<Output = T>) -> T {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {human_pos}/~{human_len} rows, {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut redraw = tokio::time::interval(Duration::from_millis(100));
    let mut shown = String::new();
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = redraw.tick() => {
                let table = progress.table();
                if table != shown {
                    bar.reset();
                    bar.set_message(format!("copying {table}"));
                    shown = table;
                }
                bar.set_length(progress.estimated_rows().max(progress.rows()));
                bar.set_position(progress.rows());
            }
        }
    };
    bar.finish_and_clear();
    out
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text(value));
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Init => {
            let consumer = londiste::init(&config).await?;
            let done = serde_json::json!({
                "queue": config.queue.as_str(),
                "consumer": consumer.as_str(),
            });
            print(cli.json, &done, |_| {
                format!(
                    "initialized: queue {} on the provider, worker {consumer} registered\n",
                    config.queue
                )
            })?;
        }
        Command::AddTable { tables, options } => {
            if options.dest_table.is_some() && tables.len() > 1 {
                anyhow::bail!("--dest-table names one subscriber table: give one provider table");
            }
            let options = AddTableOptions::from(options);
            let added = with_progress(
                &options.progress,
                londiste::add_tables(&config, &tables, &options),
            )
            .await?;
            print(cli.json, &added, |added| {
                added
                    .iter()
                    .map(|a| {
                        let hint = if a.state == TableState::Ok {
                            ""
                        } else {
                            " (the worker makes it ok: run `londiste worker`)"
                        };
                        format!(
                            "{}: {} rows copied in {:.2} s, {}{hint}\n",
                            a.table, a.rows, a.copy_seconds, a.state
                        )
                    })
                    .collect()
            })?;
        }
        Command::RemoveTable { tables } => {
            for table in &tables {
                londiste::remove_table(&config, table).await?;
            }
            print(cli.json, &serde_json::json!({ "removed": tables }), |_| {
                tables.iter().map(|t| format!("{t}: removed\n")).collect()
            })?;
        }
        Command::AddSeq { sequences } => {
            londiste::add_sequences(&config, &sequences).await?;
            print(cli.json, &serde_json::json!({ "added": sequences }), |_| {
                format!("{} sequence(s) added\n", sequences.len())
            })?;
        }
        Command::Tables => {
            let tables = londiste::tables(&config).await?;
            print(cli.json, &tables, |tables| {
                let mut out = format!(
                    "{:<40} {:<12} {:>10}  {}\n",
                    "table", "state", "copy rows", "dest"
                );
                for t in tables {
                    out.push_str(&format!(
                        "{:<40} {:<12} {:>10}  {}\n",
                        t.table,
                        t.state,
                        t.copy_rows
                            .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                        t.dest_table
                    ));
                }
                out
            })?;
        }
        Command::Status => {
            let status = londiste::status(&config).await?;
            print(cli.json, &status, |s| {
                let ok = s
                    .tables
                    .iter()
                    .filter(|t| t.state == TableState::Ok)
                    .count();
                format!(
                    "queue {} worker {} ({})\nlag: {}\npending events: {}\nlast tick: {}, last batch at {}\ntables: {} ok of {}\n",
                    s.queue,
                    s.consumer,
                    if s.worker_running { "running" } else { "not running" },
                    s.lag_seconds.map_or_else(|| "-".to_owned(), |l| format!("{l:.1} s")),
                    s.pending_events.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    s.last_tick.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                    s.last_batch_at.as_deref().unwrap_or("-"),
                    ok,
                    s.tables.len()
                )
            })?;
        }
        Command::Worker { listen } => {
            let listen = listen.or_else(|| config.listen.clone());
            // Bound before the worker connects: a bad or taken address stops it here.
            let monitor = match &listen {
                Some(address) => {
                    let monitor = Monitor::bind(address).await?;
                    tracing::info!(listen = %monitor.local_addr()?, "serving /metrics, /health and /");
                    Some(monitor)
                }
                None => None,
            };
            let cancel = CancellationToken::new();
            let signals = cancel.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("stopping after the batch in hand");
                signals.cancel();
            });
            let worker = londiste::Worker::connect(&config).await?;
            if let Some(monitor) = monitor {
                worker.serve_monitor(monitor, cancel.clone());
            }
            worker.run(cancel).await?;
        }
        Command::Compare { table, rows: true } => {
            let diffs = londiste::compare_rows(&config, table.as_deref()).await?;
            print(cli.json, &diffs, |ds| ds.iter().map(diff_text).collect())?;
            if !diffs.iter().all(londiste::RowDiff::equal) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Repair { table } => {
            let diffs = londiste::repair(&config, table.as_deref()).await?;
            print(cli.json, &diffs, |ds| ds.iter().map(diff_text).collect())?;
        }
        Command::Compare { table, rows: false } => {
            let comparisons = londiste::compare(&config, table.as_deref()).await?;
            let all_equal = comparisons.iter().all(londiste::Comparison::equal);
            print(cli.json, &comparisons, |cs| {
                cs.iter()
                    .map(|c| {
                        format!(
                            "{}: at tick {}: provider {} rows, subscriber {} rows: {}\n",
                            c.table,
                            c.tick,
                            c.provider_rows,
                            c.subscriber_rows,
                            if c.equal() { "equal" } else { "DIFFERENT" }
                        )
                    })
                    .collect()
            })?;
            if !all_equal {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Check => {
            let found = londiste::check(&config).await?;
            print(cli.json, &found, |found| {
                if found.is_empty() {
                    return "no drift\n".to_owned();
                }
                found
                    .iter()
                    .map(|d| {
                        let level = match d.severity {
                            londiste::Severity::Error => "error",
                            londiste::Severity::Warning => "warning",
                        };
                        format!("{level}: {}: {}\n", d.table, d.problem)
                    })
                    .collect()
            })?;
            if found
                .iter()
                .any(|d| d.severity == londiste::Severity::Error)
            {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Execute { files } => {
            let mut done = Vec::new();
            for path in &files {
                let script = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                done.push(londiste::execute(&config, &name, &script).await?);
            }
            print(cli.json, &done, |done| {
                done.iter()
                    .map(|e| format!("{}: executed, queued as event {}\n", e.file, e.event_id))
                    .collect()
            })?;
        }
        Command::Seed {
            tables,
            schema,
            target,
            no_start,
            jobs,
        } => {
            let which = match schema {
                Some(schema) => SeedTables::Schema(schema),
                None => SeedTables::Named(tables),
            };
            let seeded = londiste::seed(&config, &which, &target.options(!no_start, jobs)).await?;
            print(cli.json, &seeded, seed_text)?;
        }
        Command::SeedFinish { target } => {
            let seeded = londiste::seed_finish(&config, &target.options(true, 1)).await?;
            print(cli.json, &seeded, seed_text)?;
        }
        Command::SeedCancel => {
            let cancelled = londiste::seed_cancel(&config).await?;
            print(cli.json, &cancelled, |c| {
                if c.is_empty() {
                    "no seed to cancel\n".to_owned()
                } else {
                    c.iter()
                        .map(|name| format!("cancelled the seed of consumer {name}\n"))
                        .collect()
                }
            })?;
        }
        Command::Resync {
            table,
            parallel_copy,
            wait,
        } => {
            let options = ResyncOptions {
                parallel_copy,
                wait: Duration::from_secs(wait),
                ..ResyncOptions::default()
            };
            let done = with_progress(
                &options.progress,
                londiste::resync(&config, &table, &options),
            )
            .await?;
            print(cli.json, &done, |d| {
                format!("{}: {} rows copied, {}\n", d.table, d.rows, d.state)
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn diff_text(d: &londiste::RowDiff) -> String {
    if d.equal() {
        return format!("{}: at tick {}: equal\n", d.table, d.tick);
    }
    let keys = |keys: &[String]| {
        let shown: Vec<&str> = keys.iter().take(10).map(String::as_str).collect();
        let more = keys.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(" "))
        } else {
            shown.join(" ")
        }
    };
    let verb = if d.repaired {
        ["inserted", "deleted", "updated"]
    } else {
        ["missing", "extra", "different"]
    };
    let mut out = format!("{}: at tick {}:\n", d.table, d.tick);
    for (what, list) in verb.iter().zip([&d.missing, &d.extra, &d.different]) {
        if !list.is_empty() {
            out.push_str(&format!("  {what} {}: {}\n", list.len(), keys(list)));
        }
    }
    out
}

fn seed_text(s: &Seeded) -> String {
    let mut out = String::new();
    if s.backup_bytes > 0 {
        out.push_str(&format!(
            "base backup: {} MiB in {:.1} s\n",
            s.backup_bytes >> 20,
            s.backup_seconds
        ));
    }
    if s.finished {
        out.push_str(&format!(
            "seeded: {} table(s) ok, worker {}; {} provider transaction(s) in the copy will be \
             skipped; new system identifier {}\nnext: run `londiste worker`\n",
            s.tables.len(),
            s.consumer,
            s.skipped_transactions.unwrap_or(0),
            s.system_identifier.as_deref().unwrap_or("-"),
        ));
    } else {
        out.push_str(&format!(
            "prepared: start the copy (pg_ctl start -D <data-dir>), then run `londiste \
             seed-finish` with the same --data-dir and --port; worker {}\n",
            s.consumer
        ));
    }
    out
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
