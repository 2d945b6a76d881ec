//! The Python programs of the reference side (`python/*.py`, run by Debian's python3 with
//! python3-pgq or python3-londiste), and their skytools configuration files.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use pgq_core::Dsn;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::daemon::pass_password;

/// The interpreter Debian's python3-pgq and python3-londiste are installed for.
pub(crate) const PYTHON: &str = "/usr/bin/python3";

/// `python/<name>` of this crate's sources.
pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// [`PYTHON`] running `python/<name>` with `args`, the password of `dsn` in `PGPASSWORD`, its
/// stderr shared with ours; killed when dropped.
pub(crate) fn command<I, S>(name: &str, args: I, dsn: &Dsn) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(PYTHON);
    command
        .arg(script(name))
        .args(args)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        // The scripts import `python/bench_worker.py`: no `__pycache__` in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1");
    pass_password(&mut command, dsn);
    command
}

/// Writes the skytools job configuration `dir/<job>.ini`: section `[section]` with the job's
/// name, its log and pid files in `dir`, `db` (`dsn` without its password) and `settings`.
pub(crate) fn skytools_config(
    dir: &Path,
    section: &str,
    job: &str,
    dsn: &Dsn,
    settings: &[(&str, &str)],
) -> Result<PathBuf> {
    let mut text = format!(
        "[{section}]\njob_name = {job}\nlogfile = {}\npidfile = {}\ndb = {}\n",
        dir.join(format!("{job}.log")).display(),
        dir.join(format!("{job}.pid")).display(),
        dsn.conninfo(),
    );
    for (key, value) in settings {
        text.push_str(&format!("{key} = {value}\n"));
    }
    let path = dir.join(format!("{job}.ini"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A Python consumer that has connected and printed `ready`, waiting for its go on stdin;
/// at its end it prints one JSON line.
pub(crate) struct PythonWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl PythonWorker {
    /// Starts `python/<name>` with `args` (see [`command`]) and waits until it is ready.
    pub(crate) async fn start<I, S>(name: &str, args: I, dsn: &Dsn) -> Result<PythonWorker>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = command(name, args, dsn)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {PYTHON} {}", script(name).display()))?;
        let stdin = child.stdin.take().context("the worker's stdin")?;
        let mut stdout =
            BufReader::new(child.stdout.take().context("the worker's stdout")?).lines();
        let ready = stdout.next_line().await?;
        ensure!(
            ready.as_deref() == Some("ready"),
            "the python worker did not get ready: {ready:?}"
        );
        Ok(PythonWorker {
            child,
            stdin,
            stdout,
        })
    }

    /// Lets the worker start its work.
    pub(crate) async fn go(&mut self) -> Result<()> {
        self.stdin.write_all(b"go\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Waits, at most `timeout`, for the worker's JSON line and its successful exit.
    pub(crate) async fn done<T: DeserializeOwned>(mut self, timeout: Duration) -> Result<T> {
        let line = tokio::time::timeout(timeout, self.stdout.next_line())
            .await
            .context("the python worker did not finish in time")??
            .context("the python worker exited early")?;
        let status = self.child.wait().await?;
        ensure!(status.success(), "python worker: {status}");
        serde_json::from_str(&line).with_context(|| format!("reading the worker's {line:?}"))
    }
}
