//! `pgq-bench` measures pgq-rs against the original PGQ extension (our baseline) and plain SQL,
//! in one run on one server, and prints markdown tables of events per second, times, CPU shares
//! and ratios.
//!
//! The binary is a thin wrapper around [`run`]; tests call it with small sizes.
//!
//! ```no_run
//! use clap::Parser as _;
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let cli = pgq_bench::Cli::parse_from(["pgq-bench", "produce", "--quick"]);
//!     let reports = pgq_bench::run(cli).await?;
//!     assert_eq!(reports[0].scenario, "produce");
//!     Ok(())
//! }
//! ```
//!
//! A scenario is a [`Scenario`] variant, a module of `scenarios/` with `async fn run(&Bench)
//! -> Result<Report>` (set up, measure, report), and one arm in its dispatch. What scenarios
//! share (scratch databases, work directories, the reference checks, daemons, CPU sampling,
//! statistics, the counting consumer) is in `harness/`.
//!
//! Main items: [`run`], [`Cli`], [`Scenario`], [`Report`].

mod cli;
mod harness;
mod out;
mod report;
mod scenarios;

use anyhow::{Context as _, Result};
use pgq_core::Dsn;

pub use cli::{Cli, Scenario};
pub use report::{Limit, Measure, Ratio, Report, Sample, Series};

use cli::Plan;
use harness::{Bench, Server};

/// How to build the binaries a run needs: pgq-bench and the `pgq-ticker` it starts.
const BUILD: &str = "cargo build --release -p pgq-ticker -p pgq-bench";

/// Runs the scenarios `cli` asks for (all when none), printing a markdown report of each to
/// stdout; writes every report as JSON to `cli.json` when given, and `BENCHMARKS.md`, the JSON
/// and SVG charts under `cli.out` when given.
///
/// The server is `--dsn`, else `PGQ_DSN`, `DATABASE_URL` or libpq's `PG*` variables, else a
/// private throwaway cluster. Scratch databases are dropped at the end, also after a failure.
///
/// # Errors
///
/// A bad connection string, a server that cannot be reached or started, any failing statement,
/// a block whose row count is wrong, or a file that cannot be written.
pub async fn run(cli: Cli) -> Result<Vec<Report>> {
    let plan = Plan::new(&cli);
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios.clone()
    };
    let dsn = match &cli.dsn {
        Some(dsn) => Some(Dsn::parse(dsn).context("--dsn")?),
        None => Dsn::from_env()?,
    };
    let server = Server::open(dsn).await?;
    let bench = Bench::new(&server, plan, cli.ticker_bin.as_deref());
    let result = run_on(&bench, &scenarios).await;
    let dropped = server.drop_scratch().await;
    let (description, reports) = result?;
    dropped?;
    let json = serde_json::json!({
        "server": description,
        "runs": plan.runs,
        "reports": reports,
    });
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &cli.out {
        let doc = out::Document {
            build: BUILD,
            invocation: command(&cli, &cli.scenarios, true),
            commands: reports
                .iter()
                .filter_map(|r| scenarios.iter().find(|s| s.name() == r.scenario))
                .map(|&s| command(&cli, &[s], false))
                .collect(),
            machine: out::machine(),
            server: &description,
            json: &json,
            reports: &reports,
        };
        out::write(dir, &doc)?;
        println!("Wrote {}", dir.join("BENCHMARKS.md").display());
    }
    Ok(reports)
}

/// The command line running `scenarios` (all when empty) with `cli`'s settings, once [`BUILD`]
/// has built the binaries, without the server (which may hold a password) and the output files
/// unless `with_out`.
fn command(cli: &Cli, scenarios: &[Scenario], with_out: bool) -> String {
    let mut words = vec!["target/release/pgq-bench".to_owned()];
    words.extend(scenarios.iter().map(|s| s.name().to_owned()));
    if cli.quick {
        words.push("--quick".to_owned());
    }
    for (flag, value) in [
        ("--runs", cli.runs.map(u64::from)),
        ("--reps", cli.reps.map(u64::from)),
        ("--hold", cli.hold),
        ("--seed-scale", cli.seed_scale.map(u64::from)),
    ] {
        if let Some(value) = value {
            words.push(format!("{flag} {value}"));
        }
    }
    if with_out {
        if let Some(dir) = &cli.out {
            words.push(format!("--out {}", dir.display()));
        }
    }
    words.join(" ")
}

/// Describes the server, then runs and prints each scenario.
async fn run_on(bench: &Bench<'_>, scenarios: &[Scenario]) -> Result<(String, Vec<Report>)> {
    let description = bench.server.describe().await?;
    println!("# pgq-bench\n\n{description}\n");
    let mut reports = Vec::with_capacity(scenarios.len());
    for &scenario in scenarios {
        tracing::info!(scenario = scenario.name(), "running");
        let report = scenarios::run(scenario, bench)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        println!("{report}");
        reports.push(report);
    }
    Ok((description, reports))
}
