//! The scenarios. Each module reads in the same order: its constants and sizes, its method
//! (the notes the report opens with, built from those constants), then `run`: set up, measure
//! every variant run by run, report.

mod backlog;
mod basebackup;
mod e2e;
mod exact_backlog;
mod held_xmin;
mod latency;
mod londiste;
mod partitioned;
mod produce;
mod seed;
mod ticker;

use anyhow::Result;

use crate::cli::Scenario;
use crate::harness::Bench;
use crate::report::Report;

/// Runs one scenario.
pub(crate) async fn run(scenario: Scenario, bench: &Bench<'_>) -> Result<Report> {
    match scenario {
        Scenario::Produce => produce::run(bench).await,
        Scenario::Ticker => ticker::run(bench).await,
        Scenario::Basebackup => basebackup::run(bench).await,
        Scenario::E2e => e2e::run(bench).await,
        Scenario::Latency => latency::run(bench).await,
        Scenario::Backlog => backlog::run(bench).await,
        Scenario::ExactBacklog => exact_backlog::run(bench).await,
        Scenario::HeldXmin => held_xmin::run(bench).await,
        Scenario::Londiste => londiste::run(bench).await,
        Scenario::Seed => seed::run(bench).await,
        Scenario::Partitioned => partitioned::run(bench).await,
    }
}
