//! What the scenarios share: the server and its scratch databases, a work directory, the
//! checks for the original PGQ stack, the daemons and the Python workers they are compared
//! with, concurrent producers, CPU sampling, statistics, a counting consumer and a delayed
//! network link.

mod counter;
mod cpu;
mod daemon;
mod fill;
mod link;
mod python;
mod reference;
mod server;
mod stats;
mod work_dir;

use std::path::{Path, PathBuf};

use anyhow::Result;

pub(crate) use counter::Counter;
pub(crate) use cpu::{Cpu, CpuClock};
pub(crate) use daemon::{backend_pids, Daemon};
pub(crate) use fill::Producer;
pub(crate) use link::{DelayedLink, LinkShape};
pub(crate) use python::{command as python_command, skytools_config, PythonWorker, PYTHON};
pub(crate) use reference::{reference, Part, Side};
pub(crate) use server::Server;
pub(crate) use stats::{median_of_sorted, percentile};
pub(crate) use work_dir::WorkDir;

use crate::cli::Plan;

/// What a scenario runs with: the server, how long and how often to measure, and where our
/// daemon's binary is.
pub(crate) struct Bench<'a> {
    pub(crate) server: &'a Server,
    pub(crate) plan: Plan,
    /// `--ticker-bin`, when given.
    ticker_bin: Option<&'a Path>,
}

impl<'a> Bench<'a> {
    pub(crate) fn new(server: &'a Server, plan: Plan, ticker_bin: Option<&'a Path>) -> Bench<'a> {
        Bench {
            server,
            plan,
            ticker_bin,
        }
    }

    /// The `pgq-ticker` binary the daemon scenarios start: `--ticker-bin` (`PGQ_BENCH_TICKER`),
    /// else the one the build put beside this program.
    ///
    /// # Errors
    ///
    /// When there is none, saying how to build it.
    pub(crate) fn ticker_binary(&self) -> Result<PathBuf> {
        daemon::ticker_binary(self.ticker_bin)
    }
}
