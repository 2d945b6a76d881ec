//! `pgq-bench`: measures pgq-rs against the original PGQ extension and plain SQL, side by side.

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("pgq_bench=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match pgq_bench::run(pgq_bench::Cli::parse()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
