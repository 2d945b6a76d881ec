//! The `pgq-ticker` command: the ticker daemon and the queue admin commands.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_tracing(&cli.log_level);
    commands::run(cli).await.unwrap_or_else(|err| {
        match err.downcast_ref::<std::io::Error>() {
            // stdout closed early (`| head`): nothing more to say
            Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {}
            _ => eprintln!("error: {err:#}"),
        }
        ExitCode::FAILURE
    })
}
