//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Measures pgq-rs against the original PGQ extension and plain SQL in one run, on one server.
///
/// Without `--dsn` (nor `PGQ_DSN`, `DATABASE_URL` or libpq's `PG*` variables) it starts a
/// private throwaway cluster and connects to it over TCP. With one, it creates scratch databases
/// `pgq_bench_*` on that server (superuser needed) and drops them at the end.
///
/// The scenarios ticker, e2e, latency, backlog, held-xmin and partitioned start the
/// `pgq-ticker` binary found beside this one: build both with `cargo build --release -p
/// pgq-ticker -p pgq-bench`, then run `target/release/pgq-bench`. `partitioned` runs on private
/// clusters of its own and needs PL/Proxy (Debian: `postgresql-15-plproxy`).
#[derive(Debug, Clone, Parser)]
#[command(name = "pgq-bench", version)]
pub struct Cli {
    /// Scenarios to run, in this order (default: all).
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// Short timed blocks and one run: a quick look, not a figure to quote.
    #[arg(long)]
    pub quick: bool,

    /// Runs per scenario; each run measures every variant once, alternating [default: 3, 1 with
    /// --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,

    /// Repetitions per timed block, instead of calibrating blocks to about a second.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,

    /// Server to benchmark on (libpq keyword/value string or URL).
    #[arg(long, env = "PGQ_DSN", hide_env_values = true)]
    pub dsn: Option<String>,

    /// Also write every run's raw figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also write `DIR/BENCHMARKS.md`, the raw runs as `DIR/benchmarks/runs.json` and SVG
    /// charts `DIR/benchmarks/*.svg` linked from it.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// The `pgq-ticker` binary to start [default: the one beside pgq-bench].
    #[arg(long, value_name = "PATH", env = "PGQ_BENCH_TICKER")]
    pub ticker_bin: Option<PathBuf>,

    /// How long `held-xmin` runs each variant with the xmin horizon held [default: 300, 60
    /// with --quick].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(3..))]
    pub hold: Option<u64>,

    /// pgbench scale of the cluster `basebackup` copies on loopback (100 is about 1.5 GB of
    /// files) [default: 100, 5 with --quick].
    #[arg(long, value_name = "SCALE", value_parser = clap::value_parser!(u32).range(1..))]
    pub basebackup_scale: Option<u32>,

    /// pgbench scale of the cluster `basebackup` copies over the delayed link (20 is about
    /// 320 MB of files) [default: 20, 1 with --quick].
    #[arg(long, value_name = "SCALE", value_parser = clap::value_parser!(u32).range(1..))]
    pub link_scale: Option<u32>,
    /// pgbench scale factor of the provider `seed` fills [default: 100, 2 with --quick].
    #[arg(long, value_name = "SCALE", value_parser = clap::value_parser!(u32).range(1..))]
    pub seed_scale: Option<u32>,
}

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Producing events: `insert_event` and bulk insert, ours vs the reference vs plain INSERT.
    Produce,
    /// The ticker: one `pgq.ticker()` pass over many queues, the idle daemon's CPU (ours vs
    /// pgqd), and commit-to-tick latency at a 10 ms period.
    Ticker,
    /// A base backup of a pgbench-filled private cluster: MiB/s of pgq-basebackup with 1, 2 and 4
    /// jobs vs `pg_basebackup -Fp -X stream` vs `cp -a`; then over a delayed link (20 ms round
    /// trip, 20 MB/s per connection, 100 MB/s in all), with 1, 2, 4 and 8 jobs.
    Basebackup,
    /// End to end: a pre-filled backlog drained by our Runner and by 2 and 4 cooperative
    /// sub-consumers, vs python3-pgq's Consumer and CoopConsumer and a plain SELECT; and our
    /// Runner beside the `pgq-ticker` daemon with its exporter on (scraped) and off.
    E2e,
    /// Commit-to-processed latency: a producer at a steady rate, the `pgq-ticker` daemon at a
    /// 10 ms period and one Runner woken by `pgq_tick` notifications.
    Latency,
    /// A ticker outage: events pile up unticked, then the ticker comes back and one consumer
    /// drains them; ours vs pgqd and python3-pgq's Consumer.
    Backlog,
    /// The exact backlog count (`pgq.get_consumer_backlog_exact`) over 1,000,000 waiting
    /// events, warm and cold.
    ExactBacklog,
    /// A session holds the xmin horizon while a 100,000-event backlog is drained and topped
    /// up: drain rate at minute 1 and minute 5, and dead tuples in the queue's tables, ours vs
    /// the original extension.
    HeldXmin,
    /// Table replication: add-table to ok for a 100,000-row table and the replay of 200,000
    /// single-row updates, our batch-update and per-event apply vs python3-londiste.
    Londiste,
    /// A londiste subscriber of a `pgbench -i -s 100` provider under pgbench load: the time
    /// until every keyed table is ok, seeded from a base backup vs `add-table --parallel-copy 2`.
    Seed,
    /// A queue partitioned by key over 1, 2 and 4 private clusters behind a PL/Proxy proxy vs
    /// the keyed inserts called directly: produce and produce + consume throughput, CPU per
    /// event at the proxy and at the partitions, the proxy's overhead and a model for N servers.
    Partitioned,
}

impl Scenario {
    /// Every scenario, in the order they run by default.
    pub const ALL: &'static [Scenario] = &[
        Scenario::Produce,
        Scenario::Ticker,
        Scenario::Basebackup,
        Scenario::E2e,
        Scenario::Latency,
        Scenario::Backlog,
        Scenario::ExactBacklog,
        Scenario::HeldXmin,
        Scenario::Londiste,
        Scenario::Seed,
        Scenario::Partitioned,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Produce => "produce",
            Scenario::Ticker => "ticker",
            Scenario::Basebackup => "basebackup",
            Scenario::E2e => "e2e",
            Scenario::Latency => "latency",
            Scenario::Backlog => "backlog",
            Scenario::ExactBacklog => "exact-backlog",
            Scenario::HeldXmin => "held-xmin",
            Scenario::Londiste => "londiste",
            Scenario::Seed => "seed",
            Scenario::Partitioned => "partitioned",
        }
    }
}

/// How long and how often to measure, derived once from the arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Runs per scenario.
    pub(crate) runs: u32,
    /// Tiny sizes and short windows (`--quick` or `--reps`), for a look or a smoke test.
    pub(crate) small: bool,
    /// Fixed repetitions per block, when given.
    pub(crate) reps: Option<u32>,
    /// What one calibrated block should take.
    pub(crate) block: Duration,
    /// How long each variant warms up (at least one repetition).
    pub(crate) warmup: Duration,
    /// How long `held-xmin` runs each variant.
    pub(crate) hold: Duration,
    /// pgbench scale of `basebackup`'s cluster copied on loopback.
    pub(crate) basebackup_scale: u32,
    /// pgbench scale of `basebackup`'s cluster copied over the delayed link.
    pub(crate) link_scale: u32,
    /// pgbench scale factor of the provider `seed` fills.
    pub(crate) seed_scale: u32,
}

impl Plan {
    /// The plan for these arguments.
    pub(crate) fn new(cli: &Cli) -> Plan {
        let (runs, block, warmup) = if cli.quick {
            (1, Duration::from_millis(100), Duration::from_millis(50))
        } else {
            (3, Duration::from_secs(1), Duration::from_millis(500))
        };
        let small = cli.quick || cli.reps.is_some();
        Plan {
            runs: cli.runs.unwrap_or(runs),
            small,
            reps: cli.reps,
            block,
            warmup,
            hold: Duration::from_secs(cli.hold.unwrap_or(if cli.quick { 60 } else { 300 })),
            basebackup_scale: cli.basebackup_scale.unwrap_or(if small { 5 } else { 100 }),
            link_scale: cli.link_scale.unwrap_or(if small { 1 } else { 20 }),
            seed_scale: cli.seed_scale.unwrap_or(if cli.quick { 2 } else { 100 }),
        }
    }
}
