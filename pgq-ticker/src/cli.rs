//! The command line (clap derive); the doc comments are the `--help` text.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// The PGQ ticker daemon and queue administration for pgq-rs (and the original PGQ extension).
///
/// Connection settings come from --dsn, else PGQ_DSN, else DATABASE_URL, else the libpq
/// variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, ...).
#[derive(Debug, Parser)]
#[command(name = "pgq-ticker", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) conn: ConnectArgs,
    /// Log level of pgq-rs's own logs (`error`, `warn`, `info`, `debug`, `trace`), or a full
    /// tracing filter such as `pgq=debug,tokio_postgres=info`. Logs go to stderr.
    #[arg(long, env = "PGQ_LOG", default_value = "info", global = true)]
    pub(crate) log_level: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where to connect.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Connection string, libpq keyword/value (`host=db1 dbname=app`) or URL
    /// (`postgres://app@db1/app`).
    #[arg(long, env = "PGQ_DSN", global = true, hide_env_values = true)]
    pub(crate) dsn: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the ticker daemon in the foreground.
    ///
    /// SIGTERM or SIGINT stop it (a second one at once); SIGHUP reloads the configuration.
    /// Without --config it ticks the --dsn database.
    Run {
        /// The configuration file (TOML, see docs/ticker.md).
        #[arg(short, long, env = "PGQ_TICKER_CONFIG")]
        config: Option<PathBuf>,
        /// Serve /metrics, /health and a status page on this address (`host:port`); overrides
        /// the file's `listen`.
        #[arg(long, env = "PGQ_TICKER_LISTEN")]
        listen: Option<String>,
    },
    /// Print the SQL a DBA applies by hand (`psql -v ON_ERROR_STOP=1 -f FILE`), without
    /// connecting: each line's current schema for a fresh installation, or with --from the
    /// numbered files after that version, what an upgrade applies. Each file runs in its own
    /// transaction (BEGIN/COMMIT around it); `pgq-ticker install` later records the checksums.
    Sql {
        /// The schema lines, in this order.
        #[arg(value_enum, default_values_t = [LineArg::Pgq])]
        lines: Vec<LineArg>,
        /// The version the database is at (`SELECT max(version) FROM pgq_rs.migrations WHERE
        /// line = ...`); 0 for a fresh installation.
        #[arg(long, default_value_t = 0)]
        from: i32,
    },
    #[command(flatten)]
    Admin(Admin),
}

/// The one-shot commands, each on one connection.
#[derive(Debug, Subcommand)]
pub(crate) enum Admin {
    /// Install or upgrade the pgq-rs schema in the database.
    Install {
        /// The schema lines to install.
        #[arg(value_enum, default_values_t = [LineArg::Pgq])]
        lines: Vec<LineArg>,
    },
    /// Move a database from the original pgq extension (PGQ 3.x) onto the pgq-rs schema, in
    /// place and in one transaction.
    ///
    /// Queues, their events and ticks, consumers at their positions, open batches, retry events,
    /// cooperative sub-consumers and capture triggers are carried over; producers and consumers
    /// wait on its lock and go on afterwards. Refuses, changing nothing, what it cannot carry
    /// (pgq_node cascades, londiste3, a pgq_coop it did not install, objects depending on the
    /// extension). There is no way back to the extension: take a backup first.
    MigrateFromExtension {
        /// Do everything, print the report, and roll back.
        #[arg(long)]
        dry_run: bool,
        /// Give up, changing nothing, when a queue table stays locked this long (`5s`, `500ms`,
        /// or seconds); without it the migration waits for every transaction on the queues,
        /// and producers and consumers wait behind it.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        lock_timeout: Option<Duration>,
    },
    /// Make this database a PL/Proxy proxy over the partition databases of a queue partitioned
    /// by key (docs/partitions.md): cluster `pgq_partitions` and the functions of schema
    /// `pgq_proxy`. A proxied insert commits on its partition even when the caller rolls back.
    ProxySetup {
        /// A partition database's connection string (each with the queue), in order; repeat
        /// the option for each. Never printed.
        #[arg(long = "partition", value_name = "DSN", required = true)]
        partitions: Vec<String>,
        /// The number of logical partitions, a power of two, at least one per database.
        /// Changing it or the databases remaps keys: drain the queue first.
        #[arg(long, default_value_t = 16)]
        logical: u32,
    },
    /// Let roles produce through the proxy: USAGE on schema pgq_proxy and cluster
    /// pgq_partitions, EXECUTE on the functions; all roles or none.
    ProxyGrant {
        /// The producers' roles.
        #[arg(required = true, value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// Remove what proxy-setup made (schema pgq_proxy and cluster pgq_partitions).
    ProxyTeardown,
    /// Create a queue.
    CreateQueue {
        /// The queue name.
        queue: String,
    },
    /// Drop a queue with its events.
    DropQueue {
        /// The queue name.
        queue: String,
        /// Unregister its consumers first (otherwise a queue with consumers is kept).
        #[arg(long)]
        force: bool,
    },
    /// Show a queue's settings, or change them with key=value pairs.
    ///
    /// Keys: ticker_max_count, ticker_max_batch, ticker_max_lag, ticker_idle_period,
    /// ticker_paused, rotation_period, external_ticker, disable_insert, per_tx_limit. Periods as `3s`,
    /// `500ms`, `2h`.
    Config {
        /// The queue name.
        queue: String,
        /// Settings to change, as key=value.
        settings: Vec<String>,
    },
    /// Register a consumer on a queue at its newest tick.
    Register {
        /// The queue name.
        queue: String,
        /// The consumer name.
        consumer: String,
    },
    /// Unregister a consumer (its pending retry events are deleted).
    Unregister {
        /// The queue name.
        queue: String,
        /// The consumer name.
        consumer: String,
    },
    /// Queues, consumers and the ticker at work; a monitoring check.
    ///
    /// Per queue: newest tick age, event rate, each consumer's lag and pending events, and the
    /// session holding the ticker lock. Exits with 1 when the database cannot be reached, has
    /// no pgq, or a ticked queue's newest tick is missing or older than --max-tick-age.
    Status {
        /// Complain about queues whose newest tick is older than this (`90s`, `2m`, or seconds).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        max_tick_age: Option<Duration>,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// What waits for each consumer, and about how many batches that makes.
    ///
    /// Per consumer: events since its last finished tick and since the newest tick (not cut
    /// into batches yet), ticks ready, and the batch estimate at the queue's batch cap. These
    /// are estimates from the event sequence (rolled-back inserts count); --exact counts the
    /// committed events each consumer will receive, row by row.
    Backlog {
        /// Only this queue.
        queue: Option<String>,
        /// Count the events row by row (reads the whole backlog; the pgq-rs schema only).
        #[arg(long)]
        exact: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A queue's recent ticks, newest first.
    Ticks {
        /// The queue name.
        queue: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move a consumer that fell far behind forward, skipping the events in between.
    Skip {
        /// The queue name.
        queue: String,
        /// The consumer name.
        consumer: String,
        #[command(flatten)]
        target: SkipTo,
        /// Only report what would be skipped.
        #[arg(long)]
        dry_run: bool,
        /// Also count the skipped events row by row (slow on big queues).
        #[arg(long)]
        exact: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where `skip` moves the consumer.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct SkipTo {
    /// To the queue's newest tick.
    #[arg(long)]
    pub(crate) to_head: bool,
    /// To this tick.
    #[arg(long, value_name = "TICK")]
    pub(crate) to_tick: Option<i64>,
}

/// A schema line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LineArg {
    /// The queue itself (schema `pgq`).
    Pgq,
    /// PGQ's capture triggers `pgq.logutriga`, `pgq.sqltriga`, `pgq.jsontriga` in PL/pgSQL.
    PgqTriggers,
    /// Cooperative consumers (schema `pgq_coop`).
    PgqCoop,
    /// Batch tracking for remote consumers (schema `pgq_ext`).
    PgqExt,
    /// The replicator's bookkeeping (schema `londiste_rs`).
    LondisteRs,
}

impl From<LineArg> for pgq_core::Line {
    fn from(line: LineArg) -> pgq_core::Line {
        match line {
            LineArg::Pgq => pgq_core::Line::Pgq,
            LineArg::PgqTriggers => pgq_core::Line::PgqTriggers,
            LineArg::PgqCoop => pgq_core::Line::PgqCoop,
            LineArg::PgqExt => pgq_core::Line::PgqExt,
            LineArg::LondisteRs => pgq_core::Line::Londiste,
        }
    }
}

fn parse_age(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|e| e.to_string()),
        Err(_) => pgq_ticker::config::parse_duration(text),
    }
}

/// Logs to stderr through `tracing`, filtered by `level` (see [`Cli::log_level`]).
pub(crate) fn init_tracing(level: &str) {
    let directives = if level.contains('=') || level.contains(',') {
        level.to_owned()
    } else {
        format!("pgq={level}")
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|err| {
        eprintln!("warning: invalid --log-level {level:?} ({err}); using info");
        EnvFilter::new("pgq=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
